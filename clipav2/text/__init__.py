"""Text side of CLIPA: the bert-base-uncased WordPiece tokenizer, the per-sample text transform
(token-length reduction by name), and the syntax-mask priorities. See docs/text.md. Attributes
load lazily, so the config's checks (tokenizer modes) do not import NLTK."""
import importlib

_EXPORTS = {
    "Tokenizer": "clipav2.text.tokenizer",
    "TextTransform": "clipav2.text.transform",
    "make_text_transform": "clipav2.text.transform",
    "tokenize": "clipav2.text.transform",
    "find_vocab": "clipav2.text.vocab",
    "VocabNotFound": "clipav2.text.vocab",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipav2.text' has no attribute {name!r}")
