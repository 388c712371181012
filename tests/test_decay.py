"""The weight decay rules against the upstream selections, re-implemented here over the upstream
parameter names: clipa_jax/main.py (big_vision `wd_mults` default `.*/kernel$`), clipa_jax/
main_t5x.py (helpers/opt_util.py filter_bias_and_norm, filter_posembed, filter_t) and open_clip /
clipa_torch training/main.py (`p.ndim < 2 or "bn"/"ln"/"bias"/"logit_scale" in n` is exempt)."""
import re

import pytest

import clipav2
from clipav2.decay import decays
from clipav2.optim import param_groups


def _jax_names(ours: str) -> list[str]:
    """The flax parameter path(s) of one of our parameters (two_towers: img/, txt/, t)."""
    if ours == "logit_scale":
        return ["t"]
    tower, rest = ours.split(".", 1)
    top = {"visual": "img", "text": "txt"}[tower]
    fixed = {
        "patch_embed.weight": "embedding/kernel", "class_token": "cls", "pos_embed": "pos_embedding",
        "token_embed.weight": "Embed_0/embedding", "norm.weight": "encoder_norm/scale",
        "norm.bias": "encoder_norm/bias", "head.weight": "head/kernel",
    }
    if rest in fixed:
        return [f"{top}/{fixed[rest]}"]
    _, index, module, leaf = re.fullmatch(r"(blocks)\.(\d+)\.(.+)\.(weight|bias)", rest).groups()
    block = f"{top}/Transformer/encoderblock_{index}"
    leaf_jax = {"weight": "kernel", "bias": "bias"}[leaf]
    if module in ("norm1", "norm2"):
        return [f"{block}/LayerNorm_{int(module[-1]) - 1}/{'scale' if leaf == 'weight' else 'bias'}"]
    attn = f"{block}/MultiHeadDotProductAttention_0"
    if module == "attn.qkv":
        return [f"{attn}/{p}/{leaf_jax}" for p in ("query", "key", "value")]
    if module == "attn.proj":
        return [f"{attn}/out/{leaf_jax}"]
    return [f"{block}/MlpBlock_0/Dense_{int(module[-1]) - 1}/{leaf_jax}"]


def _main_py(path: str) -> bool:
    return re.fullmatch(r".*/kernel", path) is not None  # re.match(f"^{pattern}$") in big_vision


def _main_t5x_py(path: str) -> bool:
    parts = path.split("/")
    bias_and_norm = parts[-1] in ("bias", "scale")
    return not bias_and_norm and "pos_embedding" not in ".".join(parts) and ".".join(parts) != "t"


def _open_clip_name(ours: str) -> str:
    """Enough of open_clip's naming for its exclusion rule (norms are ln_*)."""
    return (ours.replace("norm1", "ln_1").replace("norm2", "ln_2").replace("visual.norm", "visual.ln_post")
            .replace("text.norm", "ln_final"))


def _open_clip_main(name: str, ndim: int) -> bool:
    exclude = ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
    return not exclude


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_rules_select_what_upstream_selects(pos_embed):
    model = clipav2.create_model("tiny", pos_embed=pos_embed)
    for name, p in model.named_parameters():
        jax = _jax_names(name)
        for rule, upstream in (("kernels", _main_py), ("kernels_and_tokens", _main_t5x_py)):
            assert {upstream(j) for j in jax} == {decays(name, rule)}, (rule, name, jax)
        assert decays(name, "matrices") == _open_clip_main(_open_clip_name(name), p.ndim), name


def test_bigg_rule_decays_class_token_and_token_embedding_h_rule_does_not():
    for name in ("visual.class_token", "text.token_embed.weight"):
        assert decays(name, "kernels_and_tokens") and not decays(name, "kernels")
    assert decays("text.token_embed.weight", "matrices") and not decays("visual.class_token", "matrices")


def test_param_groups_follow_the_rule_and_hold_every_parameter_once():
    model = clipav2.create_model("tiny")
    names = {id(p): n for n, p in model.named_parameters()}
    for rule in ("kernels", "kernels_and_tokens", "matrices"):
        decay, no_decay = param_groups(model, 0.2, rule)
        assert {names[id(p)] for p in decay["params"]} == {n for n in names.values() if decays(n, rule)}
        assert len(decay["params"]) + len(no_decay["params"]) == len(names)
        assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


def test_unknown_rule_and_unknown_parameter_are_clear_errors():
    with pytest.raises(ValueError, match="unknown weight decay rule 'all'"):
        decays("visual.head.weight", "all")
    with pytest.raises(ValueError, match="no known kind"):
        decays("visual.mystery", "kernels")


def test_recipes_set_the_rule_of_their_upstream_trainer():
    from clipav2.config import load_config

    expected = {"configs/h14.yaml": "kernels", "configs/h14_10k.yaml": "kernels", "configs/l14.yaml": "kernels",
                "configs/bigg14.yaml": "kernels_and_tokens"}
    for path, rule in expected.items():
        cfg = load_config(path)
        assert {s.weight_decay_rule for s in cfg.stages} == {rule}, path
