"""Text side of CLIPA: the bert-base-uncased WordPiece tokenizer, the per-sample text transform
(token-length reduction by name), and the syntax-mask priorities. See docs/text.md. Attributes
load lazily, so the config's checks (tokenizer modes) do not import NLTK."""
from clipav2.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "clipav2.text.tokenizer": ["Tokenizer"],
    "clipav2.text.transform": ["TextTransform", "make_text_transform", "tokenize"],
    "clipav2.text.vocab": ["find_vocab", "VocabNotFound"],
})
