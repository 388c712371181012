"""CLIP BPE packing and the CLIPA v1 syntax mask against independent truths: open_clip's own
`tokenize` (the packing clipa_torch forked) and clipa_torch tokenizer.py `syntax_mask_tokenize`,
re-implemented below in its own terms (nltk words, np.argsort, np.take, space join, BPE), with one
documented choice: a stable argsort (numpy's default one orders ties by version and CPU)."""
import pickle

import nltk
import numpy as np
import open_clip
import pytest
import torch

from clipav2.config import StageConfig
from clipav2.models.arch import ARCHITECTURES
from clipav2.text import make_text_transform
from clipav2.text import bpe
from clipav2.text.transform import tokenize

CAPTIONS = [
    "A photo of an unbelievably gorgeous sunset over the Mediterranean sea",
    "Nike Air Max 270 React - Men's Running Shoes (Black/White) | Size 10.5",
    "stock-photo-happy-young-woman-drinking-coffee-in-a-cozy-cafe-1234567",
    "Dog", "", "   ", "2019 Ford F-150 XLT 4x4 SuperCrew 5.5' Box",
    "Beautifully hand-crafted, eco-friendly bamboo toothbrushes — set of 4!",
    "Vintage 1950s Coca-Cola sign, rusted & weathered; $120 OBO",
    "Close-up of a honeybee (Apis mellifera) on a lavender flower.",
    "Top 10 places to visit in Paris this summer",
    "She quickly and quietly ran across the incredibly slippery wooden bridge",
    "IMG_4032.JPG", "Café au lait with croissant — Parisian breakfast",
    "Don't miss our BIG summer sale: up to 70% off everything!!!",
    "wedding ring, 14k gold, 0.5 carat diamond, size 7",
    "How to fix a leaking faucet in 5 easy steps",
    "Aerial view of New York City's Central Park in autumn",
    "Red dress. Free shipping. Limited offer.",
    "黄山 风景 photo", "   multiple    spaces\tand\ttabs  ",
    "&amp; html entities &quot;quoted&quot; here",
    "Samsung Galaxy S21 Ultra 5G 256GB Phantom Black Unlocked Smartphone",
    "the cat sat on the mat while the dog slept soundly by the warm fireplace",
    "Running, jumping, swimming: the triathlon athletes trained relentlessly",
]
# pairs make long captions (> 16 words) where numpy's argsort is not stable
CAPTIONS += [f"{a} {b}" for a in CAPTIONS[:15] for b in CAPTIONS[10:24]]
EOT = 49407


def _punkt_available() -> bool:
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


@pytest.fixture
def words(monkeypatch):
    """nltk.word_tokenize splits sentences with NLTK's punkt data first. Where that data is not
    installed, both implementations get one sentence per caption (NLTK's own word tokenizer
    still splits the words); where it is, both use it."""
    if not _punkt_available():
        monkeypatch.setattr(nltk.tokenize, "sent_tokenize", lambda text, language="english": [text])
        monkeypatch.setattr(bpe, "ensure_word_splitter", lambda: None)


def _clipa_torch_syntax_mask_tokenize(texts, context_length):
    tok = open_clip.tokenizer.SimpleTokenizer()

    def get_order(x):
        if x.startswith("NN"):
            return 1
        elif x.startswith("JJ"):
            return 2
        elif x.startswith("VB"):
            return 3
        return 4

    new_texts = []
    for text in texts:
        list_tokens = nltk.tokenize.word_tokenize(text)
        pos_tags = nltk.pos_tag(list_tokens)
        order_list = [get_order(tag) for _, tag in pos_tags]
        sorted_ids = np.argsort(np.array(order_list), kind="stable")
        sampled_ids = sorted(sorted_ids[:context_length - 2])
        sampled_tokens = np.take(np.array(list_tokens), sampled_ids, axis=0)
        new_text = ""
        for token in sampled_tokens:
            new_text = new_text + str(token) + " "
        new_texts.append(new_text.strip())
    return open_clip.tokenize(new_texts, context_length=context_length)


@pytest.mark.parametrize("length", [8, 16, 32])
def test_truncate_is_open_clips_tokenize(length):
    transform = make_text_transform(StageConfig(text_len=length, tokenizer_mode="clip_bpe"))
    ours = torch.stack([transform(c) for c in CAPTIONS])
    assert torch.equal(ours, open_clip.tokenize(CAPTIONS, context_length=length))
    assert torch.equal(tokenize(CAPTIONS, length, mode="clip_bpe"), ours)


@pytest.mark.parametrize("length", [8, 16])
def test_syntax_is_clipa_torchs_syntax_mask(words, length):
    transform = make_text_transform(StageConfig(text_len=length, text_reduction="syntax", tokenizer_mode="clip_bpe"))
    ours = torch.stack([transform(c) for c in CAPTIONS])
    assert len(CAPTIONS) >= 200
    assert torch.equal(ours, _clipa_torch_syntax_mask_tokenize(CAPTIONS, length))
    assert (ours == EOT).sum(dim=1).eq(1).all(), "exactly one end-of-text per row"


def test_syntax_keeps_the_nouns_of_the_example(words):
    transform = bpe.BpeTextTransform(8, "syntax")
    ids = transform("A photo of an unbelievably gorgeous sunset over the Mediterranean sea")
    text = open_clip.tokenizer.SimpleTokenizer().decode([i for i in ids.tolist() if i not in (0, 49406, EOT)])
    # nouns photo, sunset, Mediterranean, sea (1), gorgeous (2), then the first priority-4 word
    assert text.split() == ["a", "photo", "gorgeous", "sunset", "mediterranean", "sea"]


def test_vocabulary_fits_the_v1_text_towers_and_the_transform_pickles():
    assert open_clip.tokenizer.SimpleTokenizer().vocab_size == bpe.VOCAB_SIZE == 49408
    v1 = [a for a in ARCHITECTURES.values() if a.init == "open_clip"]
    assert len(v1) == 5 and {a.text.vocab_size for a in v1} == {49408}
    transform = pickle.loads(pickle.dumps(bpe.BpeTextTransform(16)))
    assert torch.equal(transform("a dog"), open_clip.tokenize(["a dog"], context_length=16)[0])
    # `clipav2 text preview` reads kept ids and their pieces
    row = open_clip.tokenize([CAPTIONS[1]], context_length=8)[0].tolist()
    assert transform.tokenizer.id_to_piece(bpe.BpeTextTransform(8).kept(CAPTIONS[1])) == transform.tokenizer.id_to_piece(row[1:7])


def test_unsupported_reduction_is_a_clear_error():
    with pytest.raises(ValueError, match="not available with the CLIP BPE tokenizer"):
        bpe.BpeTextTransform(16, "random")
