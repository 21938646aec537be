"""PDQ benchmark data with named distributions (realistic, skewed and real-image hashes).

Used by ``benchmarks/bench_pdq_realistic.py``; importable on its own::

    from benchmarks.pdq_data import DISTRIBUTIONS, generate
    data = generate("clusters", 1_000_000, seed=1)
    data.hashes      # (n, 32) uint8, one PDQ hash per row
    data.quality     # (n,) int64, the quality a lister would record (0-100)
    data.queries     # (q, 32) uint8, queries drawn like real traffic on that data

Distributions (each ``generate(name, n, seed)``):

``uniform``
    Every bit independent, set with probability 1/2 (what the older benchmarks
    used; real PDQ hashes are not like this).
``biased``
    Bit ``j`` is set with its own probability ``p_j``, drawn once from
    uniform(0.15, 0.85): the skew PDQ shows on real photo collections.
``clusters``
    Near-duplicate clusters: random centres, each with many variants (sizes
    drawn from a heavy-tailed distribution, mean about 50, up to 2,000) at
    distances 0-30 from the centre, like the re-uploads of one image a hotline
    list collects. Queries are further variants of the centres.
``degenerate``
    Uniform, plus a share (``DEGENERATE_SHARE``, 5 %) of near-degenerate
    hashes (almost all zero: 0-8 bits set) with low quality (0-40), the hashes
    of flat or blank images. A fifth of the queries are near-degenerate too.
``images``
    Uniform background plus the PDQ hashes (``pdqhash``) of real photographs
    and their edits (crops, rescales, JPEG re-encodes, overlays, brightness),
    from scikit-image's sample data when it is installed, else from Pillow-made
    synthetic scenes (``images_source`` says which). Queries are the edits; the
    stored rows are the originals, so recall at distance 31 is also a measure
    of how robust PDQ is to each edit (reported separately).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["DEGENERATE_SHARE", "DISTRIBUTIONS", "PdqData", "generate", "image_hashes"]

DEGENERATE_SHARE = 0.05
"""Share of near-degenerate (almost all-zero) rows in the ``degenerate`` distribution."""

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]


@dataclass
class PdqData:
    """Rows to index and queries to ask, from one named distribution.

    Attributes:
        name: the distribution.
        hashes: ``(n, 32)`` uint8, the stored PDQ hashes.
        quality: ``(n,)`` quality of each stored hash.
        queries: ``(q, 32)`` uint8.
        query_quality: ``(q,)`` quality of each query.
        notes: facts about the data (e.g. where the images came from).
        edits: for ``images``, the edit that made each query (same order).
    """

    name: str
    hashes: _U8
    quality: _I64
    queries: _U8
    query_quality: _I64
    notes: dict[str, object] = field(default_factory=dict)
    edits: list[str] = field(default_factory=list)


def _bits_to_bytes(bits: npt.NDArray[np.bool_]) -> _U8:
    return np.packbits(bits, axis=1)


def _uniform(rng: np.random.Generator, n: int) -> _U8:
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8)


def _flip(rng: np.random.Generator, rows: _U8, distances: _I64) -> _U8:
    """Each row with exactly ``distances[i]`` distinct random bits flipped."""
    out = rows.copy()
    step = 65_536  # bounds the (rows, 256) temporaries to tens of MB
    for lo in range(0, len(rows), step):
        hi = min(lo + step, len(rows))
        # A random permutation of the 256 bit positions per row; its first d are flipped.
        order = np.argsort(rng.random((hi - lo, 256), dtype=np.float32), axis=1)
        mask = np.zeros((hi - lo, 256), dtype=bool)
        take = np.arange(256)[None, :] < distances[lo:hi, None]
        np.put_along_axis(mask, order, take, axis=1)
        out[lo:hi] ^= _bits_to_bytes(mask)
    return out


def _queries_near(rng: np.random.Generator, hashes: _U8, count: int) -> _U8:
    """Stored rows with 0-31 bits flipped (each query has a neighbour within 31)."""
    rows = hashes[rng.integers(0, len(hashes), size=count)]
    return _flip(rng, rows, rng.integers(0, 32, size=count))


def _gen_uniform(rng: np.random.Generator, n: int, q: int) -> PdqData:
    hashes = _uniform(rng, n)
    queries = np.concatenate([_queries_near(rng, hashes, q // 2), _uniform(rng, q - q // 2)])
    return PdqData("uniform", hashes, _quality(rng, n), queries, _quality(rng, len(queries)))


def _quality(rng: np.random.Generator, n: int, low: int = 50, high: int = 101) -> _I64:
    return rng.integers(low, high, size=n).astype(np.int64)


def _biased_bits(rng: np.random.Generator, p: npt.NDArray[np.float64], n: int) -> _U8:
    out = np.empty((n, 32), dtype=np.uint8)
    step = 262_144
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        out[lo:hi] = _bits_to_bytes(rng.random((hi - lo, 256)) < p[None, :])
    return out


def _gen_biased(rng: np.random.Generator, n: int, q: int) -> PdqData:
    p = rng.uniform(0.15, 0.85, size=256)
    hashes = _biased_bits(rng, p, n)
    queries = np.concatenate([_queries_near(rng, hashes, q // 2), _biased_bits(rng, p, q - q // 2)])
    data = PdqData("biased", hashes, _quality(rng, n), queries, _quality(rng, len(queries)))
    data.notes["bit_probability_range"] = [round(float(p.min()), 3), round(float(p.max()), 3)]
    return data


def _gen_clusters(rng: np.random.Generator, n: int, q: int) -> PdqData:
    # Heavy-tailed sizes (Pareto, mean about 50): most clusters are small, a few
    # hold thousands of re-uploads.
    sizes: list[int] = []
    total = 0
    while total < n:
        size = int(min(2_000, max(1, rng.pareto(1.2) * 10)))
        size = min(size, n - total)
        sizes.append(size)
        total += size
    centres = _uniform(rng, len(sizes))
    owner = np.repeat(np.arange(len(sizes)), sizes)
    hashes = _flip(rng, centres[owner], rng.integers(0, 31, size=n))
    # Queries: new variants of the centres, picked in proportion to cluster size
    # (popular images are queried most), plus some misses.
    picked = owner[rng.integers(0, n, size=q - q // 4)]
    near = _flip(rng, centres[picked], rng.integers(0, 31, size=len(picked)))
    queries = np.concatenate([near, _uniform(rng, q // 4)])
    data = PdqData("clusters", hashes, _quality(rng, n), queries, _quality(rng, len(queries)))
    data.notes["clusters"] = len(sizes)
    data.notes["largest_cluster"] = int(max(sizes))
    return data


def _degenerate_rows(rng: np.random.Generator, n: int) -> _U8:
    return _flip(rng, np.zeros((n, 32), dtype=np.uint8), rng.integers(0, 9, size=n))


def _gen_degenerate(rng: np.random.Generator, n: int, q: int) -> PdqData:
    k = int(n * DEGENERATE_SHARE)
    hashes = np.concatenate([_uniform(rng, n - k), _degenerate_rows(rng, k)])
    quality = np.concatenate([_quality(rng, n - k), _quality(rng, k, 0, 41)])
    perm = rng.permutation(n)
    hashes, quality = hashes[perm], quality[perm]
    d = q // 5
    queries = np.concatenate([_degenerate_rows(rng, d), _queries_near(rng, hashes, q - d)])
    query_quality = np.concatenate([_quality(rng, d, 0, 41), _quality(rng, q - d)])
    data = PdqData("degenerate", hashes, quality, queries, query_quality)
    data.notes["degenerate_share"] = DEGENERATE_SHARE
    return data


# -- real images ------------------------------------------------------------------------


def _source_images(rng: np.random.Generator) -> tuple[str, list[tuple[str, _U8]]]:
    """RGB uint8 photographs: scikit-image's samples, else Pillow-made scenes."""
    try:
        from skimage import data as samples  # type: ignore[import-untyped,import-not-found]
    except ImportError:
        return "Pillow-generated synthetic scenes (scikit-image not installed)", _synthetic(rng)
    names = [
        "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page",
        "text", "horse", "clock", "hubble_deep_field", "immunohistochemistry", "retina",
        "cat", "grass", "gravel", "brick", "colorwheel", "logo", "motorcycle_left",
    ]  # fmt: skip
    images: list[tuple[str, _U8]] = []
    for name in names:
        loader: Callable[[], npt.NDArray[np.generic]] | None = getattr(samples, name, None)
        if loader is None:
            continue
        try:
            image = np.asarray(loader())
        except Exception:  # noqa: BLE001 - a sample needing a download (pooch) is skipped
            continue
        if image.dtype == np.bool_:
            image = image.astype(np.uint8) * 255
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(1e-9, float(np.ptp(image)))).astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        images.append((name, np.ascontiguousarray(image[..., :3])))
    return "scikit-image sample photographs (skimage.data)", images


def _synthetic(rng: np.random.Generator) -> list[tuple[str, _U8]]:
    from PIL import Image, ImageDraw

    images = []
    for i in range(16):
        im = Image.new("RGB", (480, 360), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(40):
            x0, y0 = (int(v) for v in rng.integers(0, 440, 2))
            x1, y1 = x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 200))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            else:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
        images.append((f"synthetic-{i}", np.asarray(im)))
    return images


def _edits() -> dict[str, Callable[[object], object]]:
    from PIL import Image, ImageDraw, ImageEnhance

    def crop(frac: float) -> Callable[[object], object]:
        def run(im: object) -> object:
            assert isinstance(im, Image.Image)
            w, h = im.size
            dx, dy = int(w * frac), int(h * frac)
            return im.crop((dx, dy, w - dx, h - dy))

        return run

    def rescale(factor: float) -> Callable[[object], object]:
        def run(im: object) -> object:
            assert isinstance(im, Image.Image)
            w, h = im.size
            return im.resize((max(8, int(w * factor)), max(8, int(h * factor))))

        return run

    def jpeg(quality: int) -> Callable[[object], object]:
        def run(im: object) -> object:
            assert isinstance(im, Image.Image)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality)
            return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

        return run

    def overlay(frac: float) -> Callable[[object], object]:
        def run(im: object) -> object:
            assert isinstance(im, Image.Image)
            out = im.copy()
            w, h = out.size
            draw = ImageDraw.Draw(out)
            draw.rectangle((0, int(h * (1 - frac)), w, h), fill=(255, 255, 255))
            draw.text((10, int(h * (1 - frac)) + 2), "hashmesh overlay caption", fill=(0, 0, 0))
            return out

        return run

    def brighter(im: object) -> object:
        assert isinstance(im, Image.Image)
        return ImageEnhance.Brightness(im).enhance(1.3)

    return {
        "crop-5%": crop(0.05),
        "crop-10%": crop(0.10),
        "rescale-0.5": rescale(0.5),
        "rescale-2": rescale(2.0),
        "jpeg-q30": jpeg(30),
        "jpeg-q70": jpeg(70),
        "overlay-10%": overlay(0.10),
        "overlay-25%": overlay(0.25),
        "brightness+30%": brighter,
    }


def image_hashes(seed: int = 0) -> tuple[str, list[tuple[str, str, bytes, int]]]:
    """``(source, rows)``: per image, its original and each edit as ``(image, edit, hash, quality)``.

    ``edit`` is ``"original"`` for the unedited image. Needs ``pdqhash`` and Pillow.
    """
    import pdqhash  # type: ignore[import-untyped]
    from PIL import Image

    rng = np.random.default_rng(seed)
    source, images = _source_images(rng)
    edits = _edits()
    rows: list[tuple[str, str, bytes, int]] = []
    for name, pixels in images:
        base = Image.fromarray(pixels).convert("RGB")
        variants: list[tuple[str, object]] = [("original", base)]
        variants += [(edit, run(base)) for edit, run in edits.items()]
        for edit, im in variants:
            assert isinstance(im, Image.Image)
            bits, quality = pdqhash.compute(np.asarray(im.convert("RGB")))
            packed = np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()
            rows.append((name, edit, packed, int(quality)))
    return source, rows


def _gen_images(rng: np.random.Generator, n: int, q: int) -> PdqData:
    source, rows = image_hashes()
    originals = [(r[2], r[3]) for r in rows if r[1] == "original"]
    edited = [r for r in rows if r[1] != "original"]
    k = len(originals)
    background = _uniform(rng, max(0, n - k))
    planted = np.frombuffer(b"".join(h for h, _q in originals), dtype=np.uint8).reshape(k, 32)
    hashes = np.concatenate([background, planted])
    quality = np.concatenate(
        [_quality(rng, len(background)), np.array([qq for _h, qq in originals], dtype=np.int64)]
    )
    queries = np.frombuffer(b"".join(r[2] for r in edited), dtype=np.uint8).reshape(-1, 32)
    repeat = max(1, q // max(1, len(queries)))
    data = PdqData(
        "images",
        hashes,
        quality,
        np.tile(queries, (repeat, 1)),
        np.tile(np.array([r[3] for r in edited], dtype=np.int64), repeat),
        edits=[f"{r[0]}/{r[1]}" for r in edited] * repeat,
    )
    data.notes["images_source"] = source
    data.notes["images"] = k
    data.notes["edited_queries"] = len(edited)
    return data


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int, int], PdqData]] = {
    "uniform": _gen_uniform,
    "biased": _gen_biased,
    "clusters": _gen_clusters,
    "degenerate": _gen_degenerate,
    "images": _gen_images,
}
"""Every named distribution, by name."""


def generate(name: str, n: int, *, queries: int = 1_000, seed: int = 1) -> PdqData:
    """``n`` stored rows and ``queries`` queries of distribution ``name`` (deterministic per seed).

    Raises:
        KeyError: unknown distribution (the known ones are :data:`DISTRIBUTIONS`).
    """
    return DISTRIBUTIONS[name](np.random.default_rng(seed), n, queries)
