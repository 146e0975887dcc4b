"""Coverage-guided fuzzing of the upload decoder (:func:`agents.stages.imageio.decode_image`)
with atheris (libFuzzer for Python), for a fixed time budget.

Not a test: the property tests in ``tests/unit/fuzz`` run in CI with a bounded budget;
this explores further, guided by which lines of Pillow's Python plugins and of our decoder
each input reaches (Pillow's C decoders are not instrumented: a crash inside them still
shows, as the process dying). One input fails when the decoder

* raises anything but :class:`~agents.errors.Rejected` (a crash: the worker would have
  died on that upload);
* returns pixels over the limits, or anything but H x W x 3 uint8;
* takes longer than ``-timeout`` seconds, or more memory than ``-rss_limit_mb``: a
  decompression bomb the limits missed.

The corpus starts from ``tests/data/real`` (every photo as it is) and small images of
every accepted format made from one of them, carrying EXIF, ICC and XMP blocks; libFuzzer
keeps what it learns in ``bench/out/fuzz_decoder/corpus`` and writes failing inputs to
``bench/out/fuzz_decoder/`` (``crash-*``, ``timeout-*``, ``oom-*``).

atheris is optional and not in the project's dependencies (its wheels are Linux-only;
elsewhere it builds from source against a libFuzzer-enabled clang)::

    .venv/bin/pip install atheris==3.0.0
    .venv/bin/python bench/fuzz_decoder.py                          # 300 s, the default
    .venv/bin/python bench/fuzz_decoder.py -max_total_time=60      # any libFuzzer flags
    .venv/bin/python bench/fuzz_decoder.py bench/out/fuzz_decoder/crash-<sha1>   # replay

Results of a run are recorded in RELIABILITY.md (Fuzzing).
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "fuzz_decoder"
CORPUS = OUT / "corpus"
REAL = ROOT / "tests" / "data" / "real"

try:
    import atheris
except ImportError:
    sys.exit("atheris is not installed: .venv/bin/pip install atheris==3.0.0 (Linux wheels)")

# Instrumented: Pillow's plugins (header parsing lives in Python), pillow-heif's opener and
# the decoder itself. Pillow imports its plugins lazily, at the first open: init() here
# imports them inside the instrumented block.
with atheris.instrument_imports(include=["PIL", "pillow_heif", "agents.stages.imageio"]):
    from PIL import ExifTags, Image, ImageCms

    from agents.errors import Rejected
    from agents.stages.imageio import AVIF_DECODER, decode_image
    from schemas.settings import LimitSettings

    Image.init()

#: Room for the corpus' photos; tight enough that a bomb is a refusal, not an OOM.
LIMITS = LimitSettings(max_pixels=4_000_000, max_side_px=4_000, max_frames=2)
DEFAULTS = ("-max_total_time=300", "-timeout=10", "-rss_limit_mb=3072", "-max_len=131072")


def test_one_input(data: bytes) -> None:
    try:
        clean = decode_image(data, LIMITS)
    except Rejected:
        return
    pixels = clean.pixels
    height, width = pixels.shape[:2]
    if pixels.dtype.name != "uint8" or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise AssertionError(f"decoded to {pixels.shape} {pixels.dtype}")
    if max(height, width) > LIMITS.max_side_px or height * width > LIMITS.max_pixels:
        raise AssertionError(f"decoded {width}x{height}, over {LIMITS}")


def seeds() -> dict[str, bytes]:
    """The real photos, and one of them small in every accepted format with metadata."""
    found = {path.name: path.read_bytes() for path in sorted(REAL.glob("*.jpg"))}
    with Image.open(REAL / "london_001_neutral.jpg") as photo:
        small = photo.convert("RGB").resize((40, 48))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b"<x:xmpmeta><dc:description>seed</dc:description></x:xmpmeta>"
    flipped = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    formats: dict[str, tuple[Image.Image, str, dict[str, object]]] = {
        "small.jpg": (small, "JPEG", {"exif": exif, "icc_profile": icc, "xmp": xmp}),
        "small.png": (small, "PNG", {"exif": exif, "icc_profile": icc}),
        "small16.png": (small.convert("I;16"), "PNG", {}),
        "apng.png": (small, "PNG", {"save_all": True, "append_images": [flipped]}),
        "small.webp": (small, "WEBP", {"exif": exif, "icc_profile": icc, "xmp": xmp}),
        "small.tif": (small, "TIFF", {"exif": exif, "icc_profile": icc}),
        "small.gif": (small, "GIF", {"save_all": True, "append_images": [flipped]}),
        "small.bmp": (small, "BMP", {}),
        "small.mpo": (small, "MPO", {"save_all": True, "append_images": [flipped]}),
        "small.heic": (small, "HEIF", {"quality": 50, "exif": exif.tobytes(), "xmp": xmp}),
    }
    if AVIF_DECODER:
        formats["small.avif"] = (small, "AVIF", {"quality": 50, "exif": exif, "xmp": xmp})
    for name, (image, fmt, params) in formats.items():
        out = io.BytesIO()
        image.save(out, format=fmt, **params)
        found[name] = out.getvalue()
    return found


def main(argv: list[str]) -> None:
    flags = [a for a in argv[1:] if a.startswith("-")]
    inputs = [a for a in argv[1:] if not a.startswith("-")]
    if not inputs:
        # A fuzzing run: the seed corpus, the default budget unless a flag replaces it.
        CORPUS.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (CORPUS / f"seed-{name}").write_bytes(data)
        given = {f.split("=", 1)[0] for f in flags}
        flags = [d for d in DEFAULTS if d.split("=", 1)[0] not in given] + flags
        flags += [f"-artifact_prefix={OUT}/", "-print_final_stats=1"]
        inputs = [str(CORPUS)]
    # Damaged files make Pillow warn; only what the decoder raises or returns matters.
    warnings.simplefilter("ignore")
    atheris.Setup([argv[0], *flags, *inputs], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
