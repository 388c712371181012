"""Text token selection: the four pure functions, then the per-sample transform built from a
stage config (kept counts, order, per-sample determinism, syntax priorities, config errors)."""
import os
import pickle
import random

import pytest
import torch

from clipav2.config import ConfigError, StageConfig, load_config
from clipav2.reduce import text as reduce_text
from clipav2.text import make_text_transform
from clipav2.text.captions import generate_captions
from clipav2.text.syntax import context_priorities

assert os.environ.get("CLIPAV2_VOCAB") and os.environ.get("NLTK_DATA"), "set CLIPAV2_VOCAB and NLTK_DATA (see .ci/run)"
CASES = [(n, k) for n in (0, 1, 2, 5, 8, 31, 60) for k in (1, 2, 7, 31)]


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    # one syntax table for the whole session, never in the user's ~/.cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPAV2_CACHE", str(tmp_path_factory.getbasetemp() / "clipav2-cache"))
        yield


@pytest.mark.parametrize("name", ["truncate", "random", "block", "syntax", "syntax_pieces"])
@pytest.mark.parametrize("n, k", CASES)
def test_count_and_order(name, n, k):
    pieces = list(range(100, 100 + n))
    prios = [random.Random(n).randint(1, 4) for _ in pieces]
    extra = {"words": [i // 2 for i in range(n)]} if name == "syntax" else {}
    kept = reduce_text.REDUCTIONS[name].select(pieces, k, rng=random.Random(0), priorities=prios, **extra)
    assert len(kept) == min(n, k) == reduce_text.REDUCTIONS[name].kept_count(n, k)
    assert kept == sorted(set(kept)) and set(kept) <= set(pieces), "a subsequence: original order, no repeats"
    if n <= k:
        assert kept == pieces


def test_truncate_and_block_are_windows():
    pieces = list(range(40))
    assert reduce_text.truncate(pieces, 7) == pieces[:7]
    starts = set()
    for seed in range(200):
        kept = reduce_text.block(pieces, 7, rng=random.Random(seed))
        assert kept == list(range(kept[0], kept[0] + 7))
        starts.add(kept[0])
    assert starts == set(range(34)), "every start position occurs"


@pytest.mark.parametrize("name", ["random", "block"])
def test_random_draws_repeat_per_seed_and_differ_across_seeds(name):
    pieces = list(range(50))
    fn = reduce_text.REDUCTIONS[name].select
    assert fn(pieces, 10, rng=random.Random(5)) == fn(pieces, 10, rng=random.Random(5))
    assert len({tuple(fn(pieces, 10, rng=random.Random(s))) for s in range(20)}) > 10


def test_syntax_pieces_keeps_the_highest_priorities_stably():
    rng = random.Random(0)
    for _ in range(500):
        n, k = rng.randint(2, 60), rng.randint(1, 40)
        prios = [rng.randint(1, 4) for _ in range(n)]
        kept = reduce_text.syntax_pieces(list(range(n)), k, priorities=prios)
        dropped = sorted(set(range(n)) - set(kept))
        assert not dropped or max(prios[i] for i in kept) <= min(prios[i] for i in dropped)
        cut = max(prios[i] for i in kept)
        ties_kept = [i for i in kept if prios[i] == cut]
        ties_all = [i for i in range(n) if prios[i] == cut]
        assert ties_kept == ties_all[: len(ties_kept)], "among equal priorities the earlier pieces stay"


# ---------------------------------------------------------------- the stage transform

CAPTIONS = generate_captions(300, seed=7)


def _transform(reduction, length=8, mode="clipa", name="pretrain", seed=0):
    stage = StageConfig(name=name, text_len=length, text_reduction=reduction, tokenizer_mode=mode)
    return make_text_transform(stage, seed=seed)


@pytest.mark.parametrize("reduction", ["truncate", "random", "block", "syntax", "syntax_pieces", "syntax_context"])
@pytest.mark.parametrize("length, mode", [(8, "clipa"), (16, "open_clip"), (32, "clipa")])
def test_transform_rows(reduction, length, mode):
    t = _transform(reduction, length, mode)
    budget = length - 1 if mode == "clipa" else length - 2
    for i, caption in enumerate(CAPTIONS[:60]):
        row = t(caption, str(i))
        pieces = t.tokenizer.encode(caption)
        assert row.shape == (length,) and row.dtype == torch.long and row[0] == 101
        kept = [x for x in row[1:].tolist() if x]
        assert len(kept) == min(len(pieces), budget)
        it = iter(pieces)
        assert all(p in it for p in kept), "kept pieces are a subsequence of the caption's pieces"
        if reduction == "truncate":
            assert kept == pieces[:budget]


@pytest.mark.parametrize("reduction", ["random", "block"])
def test_transform_is_seeded_per_sample(reduction):
    t = _transform(reduction)
    long_captions = [c for c in CAPTIONS if len(t.tokenizer.encode(c)) > 12][:50]
    first = [t(c, f"key{i}") for i, c in enumerate(long_captions)]
    worker = pickle.loads(pickle.dumps(t))  # a data-loader worker, or a resumed run
    assert all(torch.equal(a, worker(c, f"key{i}")) for i, (a, c) in enumerate(zip(first, long_captions)))
    other_key = [t(c, f"other{i}") for i, c in enumerate(long_captions)]
    seed1, finetune = _transform(reduction, seed=1), _transform(reduction, name="finetune")
    other_seed = [seed1(c, f"key{i}") for i, c in enumerate(long_captions)]
    other_stage = [finetune(c, f"key{i}") for i, c in enumerate(long_captions)]
    for variant in (other_key, other_seed, other_stage):
        assert sum(not torch.equal(a, b) for a, b in zip(first, variant)) > 25


def test_vocabulary_syntax_pieces_keeps_pieces_that_outrank_the_dropped():
    t = _transform("syntax_pieces", 8)
    longer = 0
    for i, caption in enumerate(CAPTIONS):
        pieces = t.tokenizer.encode(caption)
        kept = t.kept(caption, str(i))
        if len(pieces) <= 7:
            continue
        longer += 1
        kept_prio = [t.table[p] for p in kept]
        rest = list(pieces)
        for p in kept:
            rest.remove(p)
        assert max(kept_prio) <= min(t.table[p] for p in rest), caption
    assert longer > 200


def test_context_syntax_keeps_pieces_that_outrank_the_dropped():
    t = _transform("syntax_context", 8)
    for i, caption in enumerate(CAPTIONS[:120]):
        encoding, _ = t.tokenizer.encoding(caption)
        if len(encoding.ids) <= 7:
            continue
        prios = context_priorities(caption, encoding.offsets)
        kept = reduce_text.syntax_pieces(list(range(len(prios))), 7, priorities=prios)
        assert [encoding.ids[i] for i in kept] == t.kept(caption, str(i))
        dropped = set(range(len(prios))) - set(kept)
        assert max(prios[i] for i in kept) <= min(prios[i] for i in dropped)


@pytest.mark.parametrize("reduction", ["random", "block", "syntax", "syntax_pieces", "syntax_context"])
def test_bad_captions_through_every_reduction(reduction):
    t = _transform(reduction, 8)
    for caption in ["", "  ", b"\xff\xfe bad \xc3 bytes", "dog " * 25_000, "🐶 " * 50, "собака бежит по снегу " * 3]:
        row = t(caption, "k")
        assert row.shape == (8,) and row[0] == 101
    assert t("", "k").tolist() == [101] + [0] * 7


@pytest.mark.parametrize(
    "kwargs, key",
    [({"text_reduction": "shuffle"}, "text_reduction"), ({"text_len": 1}, "text_len"), ({"tokenizer_mode": "t5"}, "mode")],
)
def test_transform_errors_name_the_setting(kwargs, key):
    with pytest.raises(ValueError, match=key):
        make_text_transform(StageConfig(**kwargs))


@pytest.mark.parametrize(
    "override, key",
    [
        ("stages.s.text_reduction=shuffle", "stages.s.text_reduction"),
        ("stages.s.image_mask_ratio=1.0", "stages.s.image_mask_ratio"),
        ("stages.s.image_mask_ratio=-0.5", "stages.s.image_mask_ratio"),
        ("stages.s.grid_window=3", "stages.s.grid_window"),  # 32 px / patch 8: a 4x4 grid
        ("stages.s.image_reduction=checkerboard", "stages.s.image_reduction"),
    ],
)
def test_reduction_settings_are_config_errors(tmp_path, override, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: tiny}\nstages:\n  - {name: s, image_size: 32, samples: 100, global_batch: 10, image_reduction: grid}\n"
    )
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(recipe, [override])


@pytest.mark.parametrize("reduction", ["syntax", "syntax_pieces", "syntax_context"])
def test_every_syntax_variant_is_a_valid_stage_setting(tmp_path, reduction):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: tiny}\nstages:\n  - {name: s, image_size: 32, samples: 100, global_batch: 10}\n")
    assert load_config(recipe, [f"stages.s.text_reduction={reduction}"]).stages[0].text_reduction == reduction
    with pytest.raises(ConfigError, match=r"eval\.protocol"):
        load_config(recipe, ["eval.protocol=big_vision"])
