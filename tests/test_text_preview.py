"""`clipav2 text preview`: what a user sees of their captions, plain and --json, and its errors."""
import json
import os

import pytest
from tokenizers import BertWordPieceTokenizer

from clipav2.cli import main

VOCAB = os.environ.get("CLIPAV2_VOCAB")
assert VOCAB and os.environ.get("NLTK_DATA"), "set CLIPAV2_VOCAB and NLTK_DATA (see .ci/run)"
CAPTION = "A fluffy white puppy sleeping on a red blanket next to the fireplace in winter"


@pytest.fixture(autouse=True)
def shared_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPAV2_CACHE", str(tmp_path_factory.getbasetemp() / "clipav2-cache"))


def _preview(capsys, *args):
    code = main(["text", "preview", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_truncate_shows_the_first_pieces(capsys):
    reference = BertWordPieceTokenizer(VOCAB, lowercase=True).encode(CAPTION, add_special_tokens=False)
    code, out, _ = _preview(capsys, "--reduction", "truncate", "--length", "6", CAPTION, "dog")
    assert code == 0
    assert out.splitlines() == [" ".join(reference.tokens[:5]), "dog"]


def test_json_lists_caption_pieces_and_ids(capsys):
    code, out, _ = _preview(capsys, "--reduction", "syntax", "--length", "8", "--json", CAPTION, "")
    assert code == 0
    rows = json.loads(out)
    assert [r["caption"] for r in rows] == [CAPTION, ""]
    entries = open(VOCAB, encoding="utf-8").read().splitlines()
    assert [entries[i] for i in rows[0]["ids"]] == rows[0]["pieces"] and len(rows[0]["ids"]) == 7
    assert {"puppy", "blanket", "fireplace", "winter"} <= set(rows[0]["pieces"])  # nouns first
    assert rows[1]["pieces"] == [] and rows[1]["ids"] == []


def test_seed_reproduces_random_previews(capsys):
    runs = {seed: _preview(capsys, "--reduction", "random", "--length", "6", "--seed", str(seed), CAPTION)[1] for seed in (1, 2)}
    assert _preview(capsys, "--reduction", "random", "--length", "6", "--seed", "1", CAPTION)[1] == runs[1]
    assert runs[1] != runs[2]


def test_bad_arguments_exit_with_a_config_error(capsys, monkeypatch):
    code, _, err = _preview(capsys, "--reduction", "truncate", "--length", "1", "x")
    assert code == 2 and "--length 1" in err
    code, _, err = _preview(capsys, "--reduction", "truncate", "--length", "8", "--vocab", "/nonexistent/vocab.txt", "x")
    assert code == 0, "an explicit path that is missing falls through to CLIPAV2_VOCAB"
    monkeypatch.delenv("CLIPAV2_VOCAB")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code, _, err = _preview(capsys, "--reduction", "truncate", "--length", "8", "--vocab", "/nonexistent/vocab.txt", "x")
    assert code == 2 and "/nonexistent/vocab.txt" in err and "CLIPAV2_VOCAB" in err
    with pytest.raises(SystemExit):
        main(["text", "preview", "--reduction", "shuffle", "--length", "8", "x"])


def test_clip_bpe_without_open_clip_is_one_line(monkeypatch, capsys):
    import builtins

    from clipav2.text import bpe

    real = builtins.__import__

    def without_open_clip(name, *args, **kwargs):
        if name.startswith("open_clip"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    bpe._bpe.cache_clear()  # an earlier test may have built the tokenizer already
    monkeypatch.setattr(builtins, "__import__", without_open_clip)
    assert main(["text", "preview", "--reduction", "truncate", "--length", "8", "--mode", "clip_bpe", "a dog"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'clipav2[v1]'" in err
