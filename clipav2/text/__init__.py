"""Text side of CLIPA: the bert-base-uncased WordPiece tokenizer, the per-sample text transform
(token-length reduction by name), and the syntax-mask priorities. See docs/text.md. Attributes
load lazily, so the config's checks (tokenizer modes) import neither NLTK nor torch."""
from clipav2.lazy import exports

MODES = ("clipa", "open_clip")  # the WordPiece modes of `Tokenizer`
TOKENIZER_MODES = (*MODES, "clip_bpe")  # stages[].tokenizer_mode; clip_bpe: CLIP's BPE (CLIPA v1, text/bpe.py)

__getattr__, __all__ = exports(__name__, {
    "clipav2.text.tokenizer": ["Tokenizer"],
    "clipav2.text.transform": ["TextTransform", "make_text_transform", "tokenize"],
    "clipav2.text.vocab": ["find_vocab", "VocabNotFound"],
})
