"""Which parameters get weight decay: a recipe setting (`stages[].weight_decay_rule`), one rule
per upstream trainer, decided from our parameter names alone.

- "kernels": CLIPA's clipa_jax/main.py (big_vision's default `wd_mults = [(".*/kernel$", 1)]`):
  every kernel (linear, convolution, head) decays; biases, LayerNorms, the class token, the token
  embedding, position tables and the temperature do not. CLIPA-v2 B/L/H-14.
- "kernels_and_tokens": clipa_jax/main_t5x.py (bigG-14): everything except biases, LayerNorm
  scales/biases, position tables and the temperature (helpers/opt_util.py filters), so the class
  token and the token embedding decay too.
- "matrices": open_clip / clipa_torch training/main.py (CLIPA v1): every parameter with >= 2
  dimensions except LayerNorms, biases and the temperature, so the token embedding and a learned
  position table decay, the 1-D class token does not.
"""
RULES = ("kernels", "kernels_and_tokens", "matrices")

_DECAYING_KINDS = {
    "kernels": {"kernel"},
    "kernels_and_tokens": {"kernel", "class_token", "token_embedding"},
    "matrices": {"kernel", "token_embedding", "position_table"},
}


def parameter_kind(name: str) -> str:
    """kernel | bias | norm | class_token | token_embedding | position_table | temperature."""
    parts = name.split(".")
    if name == "logit_scale":
        return "temperature"
    if parts[-1] == "bias":
        return "bias"
    if len(parts) > 1 and parts[-2].startswith("norm"):
        return "norm"
    if parts[-1] == "class_token":
        return "class_token"
    if parts[-1] == "pos_embed":
        return "position_table"
    if name.endswith("token_embed.weight"):
        return "token_embedding"
    if parts[-1] == "weight":
        return "kernel"
    raise ValueError(f"weight decay: parameter {name!r} has no known kind")


def decays(name: str, rule: str) -> bool:
    """Whether the parameter called `name` (as in `model.named_parameters()`) decays under `rule`."""
    if rule not in _DECAYING_KINDS:
        raise ValueError(f"unknown weight decay rule {rule!r}; choose one of {', '.join(RULES)}")
    return parameter_kind(name) in _DECAYING_KINDS[rule]
