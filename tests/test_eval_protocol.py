"""Zero-shot protocols: big_vision's canonicalisation re-implemented here, CLIP's templates and
class names, prompts through the stage's own text transform (clipa), open_clip's own classifier
builder (open_clip), and a class-name list that does not fit the set."""
import io
import os
import string

import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from clipav2.config import StageConfig, load_config
from clipav2.data.shards import ShardSink
from clipav2.eval import protocol, sets
from clipav2.eval.run import evaluate
from clipav2.eval.zeroshot import class_embeddings
from clipav2.models import create_model
from clipav2.text import make_text_transform

assert os.environ.get("CLIPAV2_VOCAB") and os.environ.get("NLTK_DATA"), "set CLIPAV2_VOCAB and NLTK_DATA (see .ci/run)"
TEMPLATES = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPAV2_CACHE", str(tmp_path_factory.getbasetemp() / "clipav2-cache"))
        yield


def big_vision_canonicalize(text, keep=None):
    """prompt_engineering._canonicalize, written out: '_' -> ' ', drop string.punctuation outside
    exact `keep`s, lower, squeeze whitespace, strip."""
    text = text.replace("_", " ")
    pieces = text.split(keep) if keep else [text]
    text = (keep or "").join("".join(c for c in p if c not in string.punctuation) for p in pieces)
    return " ".join(text.lower().split())


def test_canonicalisation_is_big_visions():
    tricky = ["A Close-Up photo of the {}.", "{}", "jack-o'-lantern", "T-shirt, tee shirt", "  Two   spaces_here!  ",
              "curly {braces} and {}", "Crème brûlée (French)"]
    for text in TEMPLATES + list(IMAGENET_CLASSNAMES) + tricky:
        assert protocol.canonicalize(text, keep="{}") == big_vision_canonicalize(text, keep="{}"), text
        assert protocol.canonicalize(text, keep=",") == big_vision_canonicalize(text, keep=","), text
    assert protocol.canonicalize("a close-up photo of a {}.", keep="{}") == "a closeup photo of a {}"
    assert protocol.canonicalize("curly {braces} and {}", keep="{}") == "curly braces and {}"


def test_clipa_prompts_are_clip_paper_canonicalised():
    names, templates = protocol.zero_shot_prompts("clipa", "imagenet", "imagenet")
    assert templates == [big_vision_canonicalize(t, "{}") for t in TEMPLATES] + ["{}"]  # big_vision's clip_paper: 81
    assert names == [big_vision_canonicalize(n, ",").split(",")[0] for n in IMAGENET_CLASSNAMES]
    names, templates = protocol.zero_shot_prompts("open_clip", "imagenet", "imagenet")
    assert templates == TEMPLATES and names == list(IMAGENET_CLASSNAMES)


def test_clipa_prompts_go_through_the_stages_syntax_mask():
    stage = StageConfig(text_len=8, text_reduction="syntax")
    tokenize = protocol.prompt_tokenizer("clipa", stage)
    names, templates = protocol.zero_shot_prompts("clipa", "imagenet", "imagenet")
    names = names[::25]
    prompts = [t.replace("{}", n) for n in names for t in templates]
    transform = make_text_transform(stage)
    assert torch.equal(tokenize(prompts), torch.stack([transform(p) for p in prompts]))

    def name_kept(rows, names_per_row):
        out = 0
        for row, name in zip(rows.tolist(), names_per_row):
            it = iter(row)
            out += all(p in it for p in transform.tokenizer.encode(name)[:3])
        return out / len(rows)

    per_row = [n for n in names for _ in templates]
    truncated = protocol.prompt_tokenizer("open_clip", stage)(prompts)
    # upstream's rule truncates prompts of at most 7 words and ranks the template's nouns with the
    # name's, so it keeps more class names than truncation, not all (all 1000 classes: 76.5% / 71.2%)
    assert name_kept(tokenize(prompts), per_row) > name_kept(truncated, per_row) + 0.03


class _OpenClipFace(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode_text(self, ids, normalize=False):
        return self.model.encode_text(ids)


@pytest.mark.parametrize("how", ["clipa", "open_clip"])
def test_class_embeddings_are_open_clips_classifier(how):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    stage = StageConfig(text_len=16, text_reduction="syntax", tokenizer_mode="open_clip" if how == "open_clip" else "clipa")
    tokenize = protocol.prompt_tokenizer(how, stage)
    names, templates = protocol.zero_shot_prompts(how, "imagenet", "imagenet")
    names = names[:12]
    ours = class_embeddings(model, names, templates, tokenize, torch.device("cpu"))
    theirs = build_zero_shot_classifier(_OpenClipFace(model), tokenize, names, templates, num_classes_per_batch=5)
    torch.testing.assert_close(ours, theirs.T, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- class names that do not fit the set

def _png(value):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def _labelled_shards(path, labels):
    sink = ShardSink(path)
    for i, label in enumerate(labels):
        sink.write({"__key__": f"{i:06d}", "png": _png(20 * i), "cls": label})
    sink.close()
    return str(path / "000000.tar")


def _config(tmp_path, names):
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: tiny}}\ndata: {{eval_classnames: {tmp_path / 'names.txt'}, eval_templates: imagenet, workers: 0}}\n"
                      "stages:\n  - {name: s, image_size: 32, text_len: 8, samples: 16, global_batch: 16}\n")
    return load_config(recipe)


def test_a_label_beyond_the_class_names_is_an_error(tmp_path):
    cfg = _config(tmp_path, ["cat", "dog"])
    shards = _labelled_shards(tmp_path / "set", [0, 1, 5])
    with pytest.raises(sets.ClassMismatch, match=r"label 5 but only 2 class names"):
        evaluate(create_model("tiny"), cfg, cfg.stages[0], torch.device("cpu"), classify_path=shards)


def test_class_names_must_match_the_set(tmp_path):
    cfg = _config(tmp_path, ["cat", "dog", "bird"])
    shards = _labelled_shards(tmp_path / "set", [0, 1])
    (tmp_path / "set" / "classnames.txt").write_text("cat\ndog\n")
    with pytest.raises(sets.ClassMismatch, match=r"3 class names given .* has 2 names in"):
        evaluate(create_model("tiny"), cfg, cfg.stages[0], torch.device("cpu"), classify_path=shards)
    folder = tmp_path / "folder"
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        (folder / c / "0.png").write_bytes(_png(100))
    with pytest.raises(sets.ClassMismatch, match=r"3 class names given .* has 2 class directories"):
        evaluate(create_model("tiny"), cfg, cfg.stages[0], torch.device("cpu"), classify_path=str(folder))
    cfg = _config(tmp_path, ["cat", "dog"])
    result = evaluate(create_model("tiny"), cfg, cfg.stages[0], torch.device("cpu"), classify_path=str(folder))
    assert result["zero_shot"]["n"] == 2 and result["zero_shot"]["classes"] == 2


def test_evaluation_with_the_default_loader_workers(tmp_path):
    """The recipes leave data.workers unset: evaluation takes the loader's default, as training does."""
    cfg = _config(tmp_path, ["cat", "dog"])
    cfg.data.workers = None
    shards = _labelled_shards(tmp_path / "set", [0, 1, 1])
    result = evaluate(create_model("tiny"), cfg, cfg.stages[0], torch.device("cpu"), classify_path=shards)
    assert result["zero_shot"]["n"] == 3
