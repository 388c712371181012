"""clipav2: a PyTorch trainer that reproduces CLIPA-v2 on GPU clusters."""

__version__ = "0.1.0"


def create_model(name: str, **overrides):
    """Build a named architecture (open_clip's names, e.g. "ViT-H-14-CLIPA")."""
    from clipav2.models import create_model as _create

    return _create(name, **overrides)


def load_model(path, name=None, **overrides):
    """Rebuild a model from a safetensors file we wrote (architecture in its metadata), or from an
    open_clip checkpoint given `name`; `image_size` / `context_length` overrides resample tables."""
    from clipav2.models.convert import load_model as _load

    return _load(path, name=name, **overrides)
