"""Finding the WordPiece vocabulary: an explicit path (the config's `data.vocab`), then the
`CLIPAV2_VOCAB` environment variable, then `bert-base-uncased` from the Hugging Face cache or hub.
When none works, one error lists all three ways and why each failed."""
import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

HUB_REPO = "bert-base-uncased"
HUB_FILE = "vocab.txt"


class VocabNotFound(FileNotFoundError):
    """No vocabulary could be found; the message lists the three ways to provide one."""


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `url`'s host opens quickly: lets offline machines fail fast
    instead of sitting through a downloader's retries."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub() -> Path:
    import huggingface_hub
    from huggingface_hub import constants

    try:  # the cache first: no network at all
        return Path(huggingface_hub.hf_hub_download(HUB_REPO, HUB_FILE, local_files_only=True))
    except Exception as cache_error:
        if constants.HF_HUB_OFFLINE:
            raise RuntimeError(f"not in the Hugging Face cache and HF_HUB_OFFLINE is set ({cache_error})") from None
        if not reachable(constants.ENDPOINT):
            raise RuntimeError(f"not in the Hugging Face cache and {constants.ENDPOINT} is unreachable") from None
    return Path(huggingface_hub.hf_hub_download(HUB_REPO, HUB_FILE, etag_timeout=5))


def find_vocab(path=None) -> Path:
    """The vocabulary file to use, trying `path`, `$CLIPAV2_VOCAB`, then the hub, in that order."""
    failures = []
    for way, candidate in (("explicit path (config data.vocab)", path), ("CLIPAV2_VOCAB", os.environ.get("CLIPAV2_VOCAB"))):
        if not candidate:
            failures.append(f"{way}: not set")
        elif Path(candidate).is_file():
            return Path(candidate)
        else:
            failures.append(f"{way}: no such file {str(candidate)!r}")
    try:
        return _from_hub()
    except Exception as e:  # any hub failure: report it with the others
        failures.append(f"Hugging Face {HUB_REPO}/{HUB_FILE}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise VocabNotFound(
        "no WordPiece vocabulary found; give one of: a path (data.vocab / --vocab), the CLIPAV2_VOCAB "
        "environment variable, or a Hugging Face cache or connection holding bert-base-uncased. Tried: "
        + "; ".join(failures)
    )


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_dir() -> Path:
    """Where derived tables (the syntax priorities) are kept: `$CLIPAV2_CACHE` or ~/.cache/clipav2."""
    return Path(os.environ.get("CLIPAV2_CACHE") or Path.home() / ".cache" / "clipav2")
