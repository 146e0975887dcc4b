"""Safe image I/O: untrusted bytes in, bare pixels out; pixels in, metadata-free PNG out.

Shared by ingestion, the reference library and serving, so that every image the system
reads goes through one hardened decoder:

* :func:`read_bounded` reads a local file without following a swapped-in symlink and
  without reading past the size limit.
* :func:`decode_image` decodes untrusted bytes defensively (format allow-list, size,
  pixel, side and frame limits checked from the header *before* pixels are allocated),
  applies the EXIF orientation and returns bare 8-bit sRGB pixels. Because only the pixel
  array survives, EXIF (GPS included), XMP, IPTC, comments and ICC profiles are gone by
  construction rather than by a list of blocks to remember to delete.
* :func:`encode_png` writes stored crops as PNG with no ancillary chunks at all.
* :func:`scan_images` expands folders into the image files under them, naming every entry
  it skipped and why; :func:`image_files` is its list of files alone.

Phone formats: HEIF/HEIC through pillow-heif's Pillow opener (registered here, on import,
when pillow-heif is installed) and AVIF through Pillow's own plugin (when
``PIL.features.check("avif")``). Both go through the same header checks, orientation and
colour handling as every other format; without their decoder they are refused by name.

Refusals are :class:`~agents.errors.Rejected` with :attr:`Stage.ANONYMIZE` (the stage in
which ingestion decodes); other callers map the reason code to their own errors.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageCms, ImageOps, features

from agents.errors import Rejected
from agents.records import CleanImage, RGBImage
from schemas.reasons import ReasonCode, Stage
from schemas.settings import LimitSettings

IMAGE_SUFFIXES: Final = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".mpo",
        ".heic",
        ".heif",
        ".hif",
        ".avif",
    }
)
"""File suffixes taken as images when a folder is expanded (lower case). HEIF and AVIF
files are listed whether or not their decoder is installed: one that cannot be decoded is
refused by name, never silently left out."""


def _register_heif() -> bool:
    """Register pillow-heif's HEIF opener with Pillow; False when pillow-heif is missing.

    Thumbnails, depth maps and auxiliary images are switched off: only the primary image
    is ever decoded, so there is no reason to parse more of an untrusted container.
    """
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return True


HEIF_DECODER: Final = _register_heif()
"""Whether HEIF/HEIC images decode here (pillow-heif is installed)."""
AVIF_DECODER: Final = bool(features.check("avif"))
"""Whether AVIF images decode here (Pillow was built with libavif)."""

ALLOWED_FORMATS: Final[tuple[str, ...]] = (
    ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    + (("AVIF",) if AVIF_DECODER else ())
    + (("HEIF",) if HEIF_DECODER else ())
)
"""Pillow format ids an upload may have here; every other decoder stays unreachable."""

# The ids handed to Image.open(formats=...), tried in this order. MPO has no opener of its
# own (Pillow's JPEG opener returns an MPO image when it finds a multi-picture header), and
# naming it there raises KeyError. AVIF comes before HEIF: both claim files of the generic
# 'mif1' brand; Pillow's AVIF opener passes a HEVC one on when libavif cannot parse it, but
# pillow-heif opens an AV1 one and only fails at load (this libheif decodes HEVC alone).
_OPENERS: Final[tuple[str, ...]] = tuple(f for f in ALLOWED_FORMATS if f != "MPO")

# ISO-BMFF major brands (bytes 8-12, after 'ftyp'), to name a refused phone image.
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})

PNG_COMPRESS_LEVEL: Final = 2
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_SUB: Final = 1
"""zlib level for stored crops: most of level 9's size at a fraction of its time."""

# Everything Pillow's decoders are known to raise for malformed input (its own fuzzing
# suite lists OSError, SyntaxError, ValueError, NotImplementedError; the rest come from
# plugins that unpack headers with struct or index into tables). One bad upload must end
# as a rejection, never as a crashed worker.
_DECODE_FAILURES: Final = (
    OSError,
    SyntaxError,
    ValueError,
    NotImplementedError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    # Pillow reports some damage (truncated TIFF tags, malformed MPO) as UserWarning;
    # where a warnings filter turns those into errors they are still this image's fault.
    Warning,
    # libheif's errors reach Python as RuntimeError (pillow-heif), e.g. a codec not built in.
    RuntimeError,
)

# Leading bytes of formats people commonly upload by mistake: used only to name what was
# refused in the rejection detail, never to decide anything.
_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"<!doctype html", "HTML"),
    (b"<html", "HTML"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cjxl ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"PK\x03\x04", "ZIP"),
)

_SRGB: Final = ImageCms.createProfile("sRGB")


def decode_image(data: bytes, limits: LimitSettings) -> CleanImage:
    """Decode untrusted bytes into bare, upright, 8-bit sRGB pixels.

    Raises :class:`~agents.errors.Rejected` at the anonymize stage: ``too_large`` for
    bytes, pixels or a side over ``limits`` (checked from the header before any pixel is
    allocated; decompression bombs included); ``animated`` for more frames than
    ``limits.max_frames``; ``decode_error`` for anything that
    is not a complete image in :data:`ALLOWED_FORMATS`, naming HEIF or AVIF when that is
    what it looks like and its decoder is missing here.

    Upright means as a viewer shows it: JPEG, TIFF, WebP and PNG by their EXIF
    orientation; AVIF by its ``irot``/``imir`` boxes, which Pillow hands on as that EXIF
    orientation; HEIF by the same boxes, which libheif applies while decoding (pillow-heif
    then resets the EXIF tag to 1, so nothing turns twice).
    """
    check_size(len(data), limits)
    if not data:
        raise Rejected(ReasonCode.DECODE_ERROR, Stage.ANONYMIZE, "image is empty (0 bytes)")
    # The format, to name what was corrupt: by its magic bytes until the header is read
    # (a WebP whose header is cut fails inside open(), before Pillow names it).
    opened = _magic(data)
    try:
        with Image.open(io.BytesIO(data), formats=_OPENERS) as im:
            opened = f"{im.format} "
            if im.format not in ALLOWED_FORMATS:
                raise Rejected(
                    ReasonCode.DECODE_ERROR,
                    Stage.ANONYMIZE,
                    f"format {im.format} is not accepted; accepted: {', '.join(ALLOWED_FORMATS)}",
                )
            _check_header(im, limits)
            im.load()
            icc = im.info.get("icc_profile")
            upright = ImageOps.exif_transpose(im)
            rgb = _to_srgb(upright, icc if isinstance(icc, bytes) else None)
            fmt = str(im.format)
    except Rejected:
        raise
    except Image.UnidentifiedImageError:
        raise Rejected(
            ReasonCode.DECODE_ERROR,
            Stage.ANONYMIZE,
            f"not an image in an accepted format ({_sniff(data)}); "
            f"accepted: {', '.join(ALLOWED_FORMATS)}",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (its warning, when a filter escalates it) fires at open() for
        # sizes far past ours; either way the image is refused unallocated.
        raise Rejected(
            ReasonCode.TOO_LARGE,
            Stage.ANONYMIZE,
            f"{exc} (limits.max_pixels is {limits.max_pixels}, S2A_LIMITS__MAX_PIXELS)",
        ) from None
    except MemoryError:
        raise Rejected(
            ReasonCode.TOO_LARGE,
            Stage.ANONYMIZE,
            "decoding needs more memory than available; lower limits.max_pixels "
            f"({limits.max_pixels}, S2A_LIMITS__MAX_PIXELS)",
        ) from None
    except _DECODE_FAILURES as exc:
        raise Rejected(
            ReasonCode.DECODE_ERROR,
            Stage.ANONYMIZE,
            # libheif ends its messages with a newline; the detail is one line.
            f"corrupt or truncated {opened}image: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}"[:300],
        ) from None
    pixels = np.array(rgb, dtype=np.uint8, order="C")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise Rejected(
            ReasonCode.DECODE_ERROR,
            Stage.ANONYMIZE,
            f"decoded to shape {pixels.shape}, expected height x width x 3",
        )
    return CleanImage(pixels=pixels, format=fmt)


def encode_png(pixels: RGBImage) -> bytes:
    """PNG bytes of an H x W x 3 uint8 image with no ancillary chunks.

    Only IHDR, IDAT and IEND are written (no text, EXIF, ICC or time chunks), and the same
    pixels always give the same bytes, so stored crops are content-addressable.

    Written here rather than by Pillow because it is the store stage's hot spot: every
    accepted face is two crops (256 and 512 px), and Pillow's adaptive filtering took
    ~30 ms a 512 px crop on this machine's CPUs. One "Sub" filter for every row (a numpy
    subtraction) and zlib level 2 take under half that for files about 15% larger; zlib
    also releases the GIL, so crops encode in parallel threads.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"pixels must be height x width x 3 uint8, got shape {pixels.shape} {pixels.dtype}"
        )
    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, width * 3)
    scanlines = np.empty((height, width * 3 + 1), dtype=np.uint8)
    scanlines[:, 0] = _PNG_FILTER_SUB
    scanlines[:, 1:4] = rows[:, :3]
    # uint8 arithmetic wraps modulo 256, which is exactly the PNG Sub filter.
    np.subtract(rows[:, 3:], rows[:, :-3], out=scanlines[:, 4:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), PNG_COMPRESS_LEVEL)),
            _png_chunk(b"IEND", b""),
        )
    )


def decode_crop(data: bytes) -> RGBImage:
    """H x W x 3 uint8 RGB pixels of a crop this project stored (:func:`encode_png`).

    Stored crops are our own PNGs, already stripped and bounded, so none of
    :func:`decode_image`'s upload limits apply. Raises :class:`OSError` (Pillow's
    ``UnidentifiedImageError`` is one) when the bytes are not an image.
    """
    with Image.open(io.BytesIO(data)) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry under a folder that looked like an image but is not a file to read."""

    path: Path
    reason: str


def scan_images(paths: Iterable[Path]) -> tuple[list[Path], list[Skipped]]:
    """Files as given, and the regular image files under each folder, with what was skipped.

    Folders are walked recursively (symbolic links to folders are not followed), sorted by
    path; an entry counts as an image by its suffix (:data:`IMAGE_SUFFIXES`), anything
    else is not considered at all. An entry with an image suffix that is not a regular
    file (a folder named ``x.jpg``, whose contents are walked like any folder's; a broken
    or looping symbolic link; a FIFO or device; one whose type cannot be read), and a
    folder that cannot be listed, are returned in the second list with the reason, so
    that a caller can say what it left out. Repeats are dropped. Paths given directly are
    returned as given, unchecked. Raises nothing.
    """
    files: list[Path] = []
    skipped: list[Skipped] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        named: list[Path] = []
        # os.walk passes over a folder it may not list in silence unless told: keep them.
        unlisted: list[OSError] = []
        for folder, folders, names in os.walk(path, onerror=unlisted.append):
            named.extend(
                Path(folder, name)
                for name in (*folders, *names)
                if Path(name).suffix.lower() in IMAGE_SUFFIXES
            )
        skipped.extend(
            Skipped(
                Path(exc.filename) if exc.filename else path,
                f"a folder that cannot be read: {exc.strerror or exc}",
            )
            for exc in unlisted
        )
        for entry in sorted(named):
            why = _not_a_file(entry)
            if why is None:
                files.append(entry)
            else:
                skipped.append(Skipped(entry, why))
    return list(dict.fromkeys(files)), list(dict.fromkeys(skipped))


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The files of :func:`scan_images`, without what it skipped."""
    return scan_images(paths)[0]


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read (symlinks followed), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return "disappeared while the folder was read"
    except OSError as exc:
        # ELOOP (a link cycle), EACCES on a parent folder, ENAMETOOLONG...
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device)"
    return None


def check_size(size: int, limits: LimitSettings) -> None:
    """``Rejected(too_large)`` when ``size`` bytes exceed ``limits.max_upload_bytes``."""
    if size > limits.max_upload_bytes:
        raise Rejected(
            ReasonCode.TOO_LARGE,
            Stage.ANONYMIZE,
            f"image is {size} bytes or more; limits.max_upload_bytes is "
            f"{limits.max_upload_bytes} (S2A_LIMITS__MAX_UPLOAD_BYTES)",
        )


def read_bounded(path: Path, limits: LimitSettings) -> bytes:
    """The bytes of a regular file, never reading more than ``limits.max_upload_bytes + 1``.

    Hardened for paths an uploader may influence: a symlink swapped in after the path was
    resolved is refused (``O_NOFOLLOW``), a FIFO or device never blocks the reader, and the
    size is checked before and after the read. Raises :class:`~agents.errors.Rejected`:
    ``bad_uri`` for a missing, unreadable or non-regular file, ``too_large`` over the limit.
    """
    # O_NOFOLLOW: the path was resolved, so a symlink here was swapped in after the check.
    # O_NONBLOCK: opening a FIFO must not hang the worker before the regular-file check.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise Rejected(ReasonCode.BAD_URI, Stage.ANONYMIZE, f"no such file: {path.name}") from None
    except OSError as exc:
        raise Rejected(
            ReasonCode.BAD_URI, Stage.ANONYMIZE, f"file {path.name} is not readable: {exc.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Rejected(
                ReasonCode.BAD_URI, Stage.ANONYMIZE, f"{path.name} is not a regular file"
            )
        check_size(info.st_size, limits)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        # The file may grow between fstat and read; the bounded read still stops at limit+1.
        data = handle.read(limits.max_upload_bytes + 1)
    check_size(len(data), limits)
    return data


def _check_header(im: Image.Image, limits: LimitSettings) -> None:
    """Refuse by the declared geometry, before any pixel is decoded."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise Rejected(
            ReasonCode.DECODE_ERROR, Stage.ANONYMIZE, f"image declares size {width}x{height}"
        )
    if max(width, height) > limits.max_side_px:
        raise Rejected(
            ReasonCode.TOO_LARGE,
            Stage.ANONYMIZE,
            f"image is {width}x{height}; limits.max_side_px is {limits.max_side_px} "
            "(S2A_LIMITS__MAX_SIDE_PX)",
        )
    if width * height > limits.max_pixels:
        raise Rejected(
            ReasonCode.TOO_LARGE,
            Stage.ANONYMIZE,
            f"image is {width}x{height} = {width * height} pixels; "
            f"limits.max_pixels is {limits.max_pixels} (S2A_LIMITS__MAX_PIXELS)",
        )
    # Pillow only warns (DecompressionBombWarning) between its limit and twice it; when
    # the configured limit is looser than Pillow's, the warning is still taken as final.
    bomb_limit = Image.MAX_IMAGE_PIXELS
    if bomb_limit is not None and width * height > bomb_limit:
        raise Rejected(
            ReasonCode.TOO_LARGE,
            Stage.ANONYMIZE,
            f"image is {width}x{height} = {width * height} pixels, over Pillow's "
            f"decompression-bomb limit of {bomb_limit} (PIL.Image.MAX_IMAGE_PIXELS), which "
            f"limits.max_pixels ({limits.max_pixels}, S2A_LIMITS__MAX_PIXELS) cannot raise",
        )
    # MPO frames are the same shot again (a preview, the other eye of a stereo pair), not
    # animation: phones write them, and only the first is ever decoded.
    if im.format != "MPO":
        frames = int(getattr(im, "n_frames", 1))
        if frames > limits.max_frames:
            # Its own reason, not too_large: the fix is to send one still frame, not a
            # smaller file.
            raise Rejected(
                ReasonCode.ANIMATED,
                Stage.ANONYMIZE,
                f"animated {im.format} with {frames} frames; limits.max_frames is "
                f"{limits.max_frames} (S2A_LIMITS__MAX_FRAMES): send one still photo",
            )


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """8-bit RGB in sRGB: colour-managed when a usable profile is embedded, alpha on white."""
    im = _to_8bit(im)
    if icc:
        im = _apply_icc(im, icc)
    if im.mode == "RGBA":
        # Transparent areas become white, not the (often black) colour hidden under alpha 0.
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im if im.mode == "RGB" else im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """One of L, RGB, RGBA or CMYK, with transparency kept as alpha."""
    mode = im.mode
    if "transparency" in im.info and mode in ("1", "L", "P", "RGB"):
        # A colour key (PNG tRNS, GIF transparent index) becomes a real alpha channel.
        return im.convert("RGBA")
    if mode in ("L", "RGB", "RGBA", "CMYK"):
        return im
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling: a 16-bit
        # grayscale selfie would come out white. Scale the 0..65535 range down instead.
        wide = np.asarray(im, dtype=np.int64)
        narrow = (np.clip(wide, 0, 65535) // 257).astype(np.uint8)
        return Image.fromarray(narrow)
    if mode in ("LA", "La", "PA", "RGBa"):
        return im.convert("RGBA")
    if mode in ("1", "F"):
        return im.convert("L")
    # P without transparency, YCbCr, LAB, HSV: Pillow knows the way to RGB (or raises
    # ValueError, which becomes a decode_error).
    return im.convert("RGB")


def _apply_icc(im: Image.Image, icc: bytes) -> Image.Image:
    """Convert from the embedded profile to sRGB; a broken or mismatched profile is ignored.

    Ignoring it is the best remaining guess (most profiles are sRGB or close to it), and a
    bad profile is no reason to lose an otherwise good photo.
    """
    out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(im, source, _SRGB, outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im
    return converted if converted is not None else im


def _magic(data: bytes) -> str:
    """``"JPEG "``, ``"PNG "``, ``"WEBP "`` or ``"GIF "`` by the leading bytes, else ``""``."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG "
    if data.startswith(_PNG_SIGNATURE):
        return "PNG "
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP "
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF "
    return ""


def _sniff(data: bytes) -> str:
    """What the bytes look like, for a refusal's detail; and whether a decoder is missing."""
    head = data[:32].lstrip().lower()
    for magic, name in _SIGNATURES:
        if head.startswith(magic.lower()):
            return f"looks like {name}"
    if data[4:8] == b"ftyp":
        # The major brand, then the compatible ones: an AVIF may say 'mif1' first.
        size = int.from_bytes(data[:4], "big")
        brands = {data[i : i + 4] for i in (8, *range(16, min(size, 64), 4))}
        brand = data[8:12]
        if brands & _AVIF_BRANDS:
            return (
                "looks like AVIF, which could not be read"
                if AVIF_DECODER
                else "looks like AVIF, and this Pillow has no AVIF decoder (a Pillow built "
                "with libavif, 11.3 or later)"
            )
        if brands & _HEIF_BRANDS:
            return (
                "looks like HEIF/HEIC, which could not be read"
                if HEIF_DECODER
                else "looks like HEIF/HEIC, and no HEIF decoder is installed (pip install "
                "pillow-heif)"
            )
        return f"looks like an ISO media file of brand {brand.decode('latin-1')!r}"
    return "unrecognised format"
