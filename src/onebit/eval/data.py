"""Evaluation texts by name, read from local files (``../shared/data``) or the hub.

Names:

* ``wikitext2``: WikiText-2 **raw** test split.  Rows as the HF dataset
  ``wikitext-2-raw-v1`` has them (each non-blank line + "\\n", blank lines as
  ""), joined with "\\n\\n" — the GPTQ/OneBit convention.
* ``c4``: GPTQ's "c4-new" convention over the C4 validation sample: the
  first 1100 documents joined with " " (the caller truncates to 256 windows).
* ``tinystories``: the TinyStories validation sample as one text stream.
* any other value: a UTF-8 text file, used as is.

These are **evaluation** files: :func:`is_evaluation_file` lets training and
calibration code refuse them.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path

from ..errors import OneBitError, first_line
from ..paths import shared_dir

EVAL_FILES = {
    "wikitext2": "wikitext2/wiki.test.raw",
    "c4": "c4/c4_validation_sample.json.gz",
    "tinystories": "tinystories/tinystories_val_sample.txt",
}
#: every file in ../shared/data that is evaluation data (never train/calibrate on these)
EVAL_RELPATHS = tuple(EVAL_FILES.values()) + (
    "wikitext2/wiki.valid.raw", "piqa/valid.jsonl", "arc/arc_easy.jsonl", "arc/arc_challenge.jsonl",
    "boolq/boolq.jsonl", "winogrande/winogrande.jsonl", "lambada/lambada_openai.jsonl",
    "hellaswag/hellaswag_val.jsonl.gz")
#: bytes of a file's beginning that identify it (see :func:`content_digests`)
FINGERPRINT_BYTES = 4096
#: SHA-256 of the first 4 KiB of each known evaluation file (and, for the .gz ones, of the first
#: 4 KiB of their decompressed content), so the guard works where ``shared/`` is absent
BUILTIN_EVAL_DIGESTS = frozenset({
    "fedc49360efa99341fbbc7d01306f5f91a154f7a89c3eb57124b13573820887d",  # wikitext2/wiki.test.raw
    "e994ea28150ff3419c848700faf8527157057d2a7deea1bdc6b374fa036c02cc",  # wikitext2/wiki.valid.raw
    "ca58e5938667220f140f49697063f3d41f50940c1fa3ffef19ee42dc1deda49c",  # c4/c4_validation_sample.json.gz
    "1402ca6886a76f4724435308f066f3502eeea46e326e80f9417675a66e624aed",  # ... decompressed
    "53e488f6c7e0546d47463d2e2179540f6fd7fd6eeac6c3428dd6c35c5efcbb79",  # tinystories_val_sample.txt
    "88dea0a25eeb0d9d8a1da6f6dc638ba9012915b7435c8fe5fc3bcee9c6445cd5",  # piqa/valid.jsonl
    "808a891a16f4c1f1bb2c4162acaedfe1e90e980b85e69962802664099146b922",  # arc/arc_easy.jsonl
    "ceabe6e72b8ba93e94f720398b0e36162f317d655cf2e42fc8ee61f1dbf16383",  # arc/arc_challenge.jsonl
    "d1dfdfdeed22efb991da1d29b92e6ba151ea61ff71076c3eb191a56ba09688fe",  # boolq/boolq.jsonl
    "d83e2f51c51b290c9a65afc7a336e2507a15e042b864ef0b851a23b15518b29a",  # winogrande/winogrande.jsonl
    "048c8edab4e2903953b79be035537022c6e70723658c76a0e5d465b438ca0fbc",  # lambada/lambada_openai.jsonl
    "252db7db38d27e198ca3684bb4411a56592fc2195546d7e19bf3e3772ebb86f4",  # hellaswag/hellaswag_val.jsonl.gz
    "5033d400b544ff81d047a2ab023ef8ab03561153d5552db9d8f5907905765350",  # ... decompressed
})
#: windows GPTQ's c4-new evaluation uses
C4_WINDOWS = 256


def data_dir() -> Path | None:
    env = os.environ.get("ONEBIT_DATA")
    if env:
        return Path(env)
    sd = shared_dir()
    return sd / "data" if sd is not None else None


def _local(rel: str) -> Path | None:
    d = data_dir()
    if d is not None and (d / rel).is_file():
        return d / rel
    return None


def wikitext2_rows(raw: str) -> list[str]:
    return [line + "\n" if line.strip() else "" for line in raw.split("\n")]


def _wikitext2() -> str:
    p = _local(EVAL_FILES["wikitext2"])
    if p is not None:
        rows = wikitext2_rows(p.read_text(encoding="utf-8"))
        if rows and rows[-1] == "":  # the file's final newline is not a row
            rows.pop()
        return "\n\n".join(rows)
    return "\n\n".join(_hub_rows("wikitext", "wikitext-2-raw-v1", "test"))


def _c4() -> str:
    p = _local(EVAL_FILES["c4"])
    if p is not None:
        with gzip.open(p, "rt", encoding="utf-8") as f:
            docs = [json.loads(line)["text"] for line in f if line.strip()]
    else:
        docs = _hub_rows("allenai/c4", None, "validation",
                         data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"})
    return " ".join(docs[:1100])


def _hub_rows(name, subset, split, **kw) -> list[str]:
    try:
        import datasets  # optional
    except ImportError:
        raise OneBitError(f"dataset '{name}' not found locally (set ONEBIT_DATA or pass a text file); "
                          "install 'datasets' to download it")
    try:
        ds = datasets.load_dataset(name, subset, split=split, **kw)
    except Exception as e:
        raise OneBitError(f"cannot download dataset '{name}': {first_line(e)}")
    return list(ds["text"])


def load_text(name_or_file: str) -> str:
    """The evaluation text for a dataset name or a text file path."""
    if name_or_file == "wikitext2":
        return _wikitext2()
    if name_or_file == "c4":
        return _c4()
    if name_or_file == "tinystories":
        p = _local(EVAL_FILES["tinystories"])
        if p is None:
            raise OneBitError("TinyStories sample not found (set ONEBIT_DATA or pass a text file)")
        return p.read_text(encoding="utf-8")
    p = Path(name_or_file).expanduser()
    if not p.exists():
        raise OneBitError(f"unknown dataset or missing file '{name_or_file}' "
                          "(datasets: wikitext2, c4, tinystories; or a text file)")
    if not p.is_file():
        raise OneBitError(f"'{name_or_file}' is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OneBitError(f"'{name_or_file}' is not UTF-8 text")
    if not text.strip():
        raise OneBitError(f"'{name_or_file}' is empty")
    return text


def content_digests(path: str | os.PathLike) -> frozenset[str]:
    """SHA-256 of the first :data:`FINGERPRINT_BYTES` of a file, plus, for a gzip file, of the
    first bytes of its decompressed content: what identifies a file whatever its name or place."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(FINGERPRINT_BYTES)
    out = {hashlib.sha256(head).hexdigest()}
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(p, "rb") as f:
                out.add(hashlib.sha256(f.read(FINGERPRINT_BYTES)).hexdigest())
        except (OSError, EOFError, zlib.error):
            pass
    return frozenset(out)


@functools.lru_cache(maxsize=64)
def _cached_digests(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    return content_digests(path)


def _registry_digests() -> frozenset[str]:
    """Digests of the evaluation files listed in :data:`EVAL_RELPATHS` under the data directory."""
    d = data_dir()
    out: set[str] = set()
    if d is None:
        return frozenset()
    for rel in EVAL_RELPATHS:
        q = d / rel
        try:
            st = q.stat()
            out |= _cached_digests(str(q.resolve()), st.st_size, st.st_mtime_ns)
        except OSError:
            continue
    return frozenset(out)


def is_evaluation_file(path: str | os.PathLike) -> bool:
    """True if ``path`` holds one of the known evaluation files, recognised by content (the
    digest of its first 4 KiB, or of its decompressed first 4 KiB), not by name or location:
    the built-in table, plus the files of the evaluation-data registry when ``shared/`` is present."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    try:
        digests = content_digests(p)
    except OSError:
        return False
    return bool(digests & (BUILTIN_EVAL_DIGESTS | _registry_digests()))
