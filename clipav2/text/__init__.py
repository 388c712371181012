"""Text side of CLIPA: the bert-base-uncased WordPiece tokenizer, the per-sample text transform
(token-length reduction by name), and the syntax-mask priorities. See docs/text.md."""
from clipav2.text.tokenizer import Tokenizer
from clipav2.text.transform import TextTransform, make_text_transform, tokenize
from clipav2.text.vocab import VocabNotFound, find_vocab

__all__ = ["Tokenizer", "TextTransform", "make_text_transform", "tokenize", "find_vocab", "VocabNotFound"]
