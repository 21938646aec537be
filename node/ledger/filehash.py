"""Hashing files for matching: MD5, SHA-1 and SHA-256 of the bytes, PDQ of images.

Layer: node.ledger. Reads the files it is given; writes nothing.

The three digests are computed in one pass over the file, in 1 MiB reads, so
a disk image costs one read whatever its size. PDQ needs the optional
``pdq`` extra (``pip install 'hashmesh[pdq]'``: the ``pdqhash`` package,
Meta's reference C++ PDQ behind a Python binding, and Pillow to decode the
image); without it, or for a file that is not an image, the digests are still
returned and :attr:`FileHashes.pdq_skipped` says why there is no PDQ hash.

The PDQ hash is the 256-bit vector ``pdqhash.compute`` returns, most
significant bit first, as 64 lowercase hex digits: the spelling
python-threatexchange and Meta's tools use, so hashes made here match lists
made there.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from node.config import DEFAULT_MIN_QUALITY

__all__ = ["PDQ_MISSING", "FileHashes", "hash_bytes", "hash_file", "pdq_support"]

PDQ_MISSING = (
    "PDQ needs the optional pdq extra (the pdqhash and Pillow packages): "
    "pip install 'hashmesh[pdq]'"
)
"""Why no PDQ hash is computed when the extra is not installed."""

_READ = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileHashes:
    """What was computed for one file.

    Attributes:
        path: the file.
        size: its length in bytes.
        md5, sha1, sha256: lowercase hex digests of the bytes.
        pdq: the PDQ hash (64 lowercase hex digits), or None.
        pdq_quality: PDQ's quality score (0-100), or None.
        pdq_skipped: why there is no PDQ hash (not an image, extra missing),
            or None when there is one.
    """

    path: Path
    size: int
    md5: str
    sha1: str
    sha256: str
    pdq: str | None = None
    pdq_quality: int | None = None
    pdq_skipped: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        """What was computed, as a JSON-ready dict (``path`` as given)."""
        return {
            "path": str(self.path),
            "size": self.size,
            "md5": self.md5,
            "sha1": self.sha1,
            "sha256": self.sha256,
            "pdq": self.pdq,
            "pdq_quality": self.pdq_quality,
            "pdq_skipped": self.pdq_skipped,
        }

    @property
    def low_quality(self) -> bool:
        """Whether the PDQ hash has a quality below 50 (unreliable for matching)."""
        return self.pdq_quality is not None and self.pdq_quality < DEFAULT_MIN_QUALITY


def _pdq_modules() -> tuple[Any, Any, Any] | None:
    try:
        import numpy as np
        import pdqhash  # type: ignore[import-untyped,unused-ignore]
        from PIL import Image
    except ImportError:
        return None
    return np, pdqhash, Image


def pdq_support() -> str | None:
    """None if PDQ hashes can be computed here, else why not (:data:`PDQ_MISSING`)."""
    return None if _pdq_modules() is not None else PDQ_MISSING


def _pdq(path: Path | IO[bytes]) -> tuple[str | None, int | None, str | None]:
    modules = _pdq_modules()
    if modules is None:
        return None, None, PDQ_MISSING
    np, pdqhash, image_module = modules
    try:
        # A decompression bomb is refused, not half-decoded: Pillow warns
        # below its hard limit, and the warning is turned into the refusal.
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            with image_module.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
    except image_module.UnidentifiedImageError:
        return None, None, "not an image (PDQ is computed for images only)"
    except (image_module.DecompressionBombError, image_module.DecompressionBombWarning):
        return None, None, "image too large to decode safely"
    except (OSError, ValueError, SyntaxError) as e:
        # Pillow reports truncated or corrupt images with these.
        return None, None, f"image cannot be decoded: {e}"
    vector, quality = pdqhash.compute(pixels)
    packed = np.packbits(np.asarray(vector, dtype=np.uint8))
    return bytes(packed).hex(), int(quality), None


def hash_file(path: Path, *, pdq: bool = True) -> FileHashes:
    """MD5, SHA-1 and SHA-256 of a file, and its PDQ hash if it is an image.

    Args:
        path: the file to read.
        pdq: also try PDQ (needs the ``pdq`` extra).

    Returns:
        The hashes; ``pdq_skipped`` says why PDQ is missing, if it is.

    Raises:
        OSError: if the file cannot be read (or is a directory).
    """
    md5, sha1, sha256 = hashlib.md5(), hashlib.sha1(), hashlib.sha256()  # noqa: S324 - lists use them
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_READ):
            size += len(chunk)
            md5.update(chunk)
            sha1.update(chunk)
            sha256.update(chunk)
    value, quality, skipped = _pdq(path) if pdq else (None, None, "not asked for")
    return _hashes(path, size, (md5, sha1, sha256), (value, quality, skipped))


def hash_bytes(data: bytes, name: str, *, pdq: bool = True) -> FileHashes:
    """Like :func:`hash_file`, for a file's bytes held in memory (an upload; never stored).

    ``name`` is only reported back (as :attr:`FileHashes.path`).
    """
    digests = (
        hashlib.md5(data),  # noqa: S324 - lists use them
        hashlib.sha1(data),  # noqa: S324
        hashlib.sha256(data),
    )
    found = _pdq(io.BytesIO(data)) if pdq else (None, None, "not asked for")
    return _hashes(Path(name), len(data), digests, found)


def _hashes(
    path: Path,
    size: int,
    digests: tuple[Any, Any, Any],
    found: tuple[str | None, int | None, str | None],
) -> FileHashes:
    md5, sha1, sha256 = digests
    value, quality, skipped = found
    return FileHashes(
        path=path,
        size=size,
        md5=md5.hexdigest(),
        sha1=sha1.hexdigest(),
        sha256=sha256.hexdigest(),
        pdq=value,
        pdq_quality=quality,
        pdq_skipped=skipped,
    )
