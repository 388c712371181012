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
dropped), except for the code points in `tf_text_unnormalized.txt`: tensorflow_text 2.11's ICU 64
(Unicode 12.1) predates them and leaves them as they are, where a newer Unicode would fold them
(U+1FBF0 SEGMENTED DIGIT ZERO -> 0). Step 4 is `isolate_delimiters`, by tensorflow_text 2.11's own tables
(`tf_text_delimiters.txt`, written by tools/make_tf_text_tables.py): the `tokenizers` library's
BERT pre-tokenizer and CJK isolation use other Unicode tables (and start CJK Extension E at
U+2B920, not U+2B820), so they would split ~380 code points differently.
"""
import functools
import re
import unicodedata
from pathlib import Path

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt): NFKC_Casefold maps them to nothing.
_DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
MAX_WORD_BYTES = 100  # tensorflow_text's max_bytes_per_word: a longer word is one [UNK]


def _code_points(name: str) -> list[int]:
    """The code points of the table `name` (`first..last` lines), one of those
    tools/make_tf_text_tables.py writes from tensorflow_text 2.11."""
    out = []
    for line in Path(__file__).with_name(name).read_text(encoding="ascii").splitlines():
        if line and not line.startswith("#"):
            first, _, last = line.partition("..")
            out.extend(range(int(first, 16), int(last or first, 16) + 1))
    return out


_UNNORMALIZED_CHARS = frozenset(map(chr, _code_points("tf_text_unnormalized.txt")))
_UNNORMALIZED = re.compile("([" + "".join(sorted(_UNNORMALIZED_CHARS)) + "])")


@functools.cache
def _isolating_table() -> dict[int, str]:
    """For str.translate (twice as fast as a regex substitution over the same ~190 ranges; ~8 MB,
    mostly the CJK ideographs), built at the first caption that is not printable ASCII."""
    return {c: f" {chr(c)} " for c in _code_points("tf_text_delimiters.txt")}


def nfkc_casefold(text: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _DEFAULT_IGNORABLE.sub("", folded)


def clipa_normalize(text: str) -> str:
    """Steps 1-3 above, for text that is not plain printable ASCII (there they are `str.lower`)."""
    if not _UNNORMALIZED_CHARS.isdisjoint(text):  # normalise the runs between those code points, keep them
        parts = _UNNORMALIZED.split(text)
        return "".join(part if i % 2 else _normalize(part) for i, part in enumerate(parts))
    return _normalize(text)


def _normalize(text: str) -> str:
    out = []
    for c in unicodedata.normalize("NFD", nfkc_casefold(text)):
        category = unicodedata.category(c)
        if category == "Mn":
            continue
        out.append(" " if category in ("Cc", "Cf") else c)
    return "".join(out)


def isolate_delimiters(normalized: str) -> str:
    """Spaces around every punctuation mark and CJK ideograph, so that splitting on ASCII spaces
    (the only whitespace left after `clipa_normalize`) gives tensorflow_text's words."""
    return normalized.translate(_isolating_table())
