"""The BERT basic tokenizer's normalisation as CLIPA ran it: tensorflow_text 2.11's
`BertTokenizer(lower_case=True)` (clipa_jax/transforms/bert_ops.py; tensorflow_text's
python/ops/bert_tokenizer.py, `BasicTokenizer`):

  1. ICU NFKC_Casefold (`case_fold_utf8`): compatibility forms folded (fullwidth letters, ligatures,
     no-break spaces, superscripts), full case folding (ß -> ss), default-ignorable code points
     such as zero-width spaces and soft hyphens removed;
  2. NFD, then every nonspacing mark (\\p{Mn}) dropped: accents;
  3. control and format characters (\\p{Cc}, \\p{Cf}) replaced by a space;
  4. split on ASCII whitespace [\\t\\n\\f\\r ]; each punctuation character and each CJK ideograph is
     a word of its own.

Steps 1-3 are `clipa_normalize` (Python's unicodedata: NFKC, casefold, NFKC, default ignorables
dropped). Step 4 is the `tokenizers` library's BertPreTokenizer plus BertNormalizer's CJK
isolation, which split the same way except on three Unicode spaces that NFKC leaves and
tensorflow_text keeps inside a word (U+1680, U+2028, U+2029): those become U+FFFD, which keeps
the word whole and out of the vocabulary, hence [UNK], as upstream.
"""
import re
import unicodedata

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt): NFKC_Casefold maps them to nothing.
_DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_KEPT_IN_WORD = {"\u1680": "\ufffd", "\u2028": "\ufffd", "\u2029": "\ufffd"}
MAX_WORD_BYTES = 100  # tensorflow_text's max_bytes_per_word: a longer word is one [UNK]


def nfkc_casefold(text: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _DEFAULT_IGNORABLE.sub("", folded)


def clipa_normalize(text: str) -> str:
    """Steps 1-3 above, for text that is not plain printable ASCII (there they are `str.lower`)."""
    out = []
    for c in unicodedata.normalize("NFD", nfkc_casefold(text)):
        category = unicodedata.category(c)
        if category == "Mn":
            continue
        out.append(" " if category in ("Cc", "Cf") else _KEPT_IN_WORD.get(c, c))
    return "".join(out)
