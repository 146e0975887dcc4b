"""Style statistics, outlier judging and palette matching on the real test images.

Anime: the Pepper&Carrot and Ren'Py face crops in ``tests/data/anime`` (licenses in
``tests/data/SOURCES.csv``); photos: the London set in ``tests/data/real``; other art: the
Open Clip Art vector heads and Morevna cartoon renders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.records import RGBImage
from agents.references.style import (
    STATISTICS,
    TRAINING_SIDE,
    Palette,
    cdf_distance,
    judge,
    match_histogram,
    measure,
    robust_z,
    square_pad,
    training_image,
)
from agents.stages.imageio import decode_image
from schemas.settings import LimitSettings

DATA = Path(__file__).parents[3] / "data"
ANIME = DATA / "anime"
REAL = DATA / "real"

PENCIL = "pc_pepper_pencil_face.jpg"
Z_LIMIT = 3.5
MIN_SIZE = 5


def _load(path: Path) -> RGBImage:
    """Decoded as ``refs add`` decodes it (alpha composited on white)."""
    return decode_image(path.read_bytes(), LimitSettings()).pixels


def _images(paths: list[Path]) -> dict[str, RGBImage]:
    return {p.name: _load(p) for p in paths}


@pytest.fixture(scope="module")
def pc() -> dict[str, RGBImage]:
    """The coloured Pepper&Carrot face crops (the pencil sketch is kept apart)."""
    return _images([p for p in sorted(ANIME.glob("pc_*_face.*")) if p.name != PENCIL])


@pytest.fixture(scope="module")
def renpy() -> dict[str, RGBImage]:
    return _images(sorted(ANIME.glob("renpy_*_face.*")))


@pytest.fixture(scope="module")
def london() -> dict[str, RGBImage]:
    return _images(sorted(REAL.glob("london_*.jpg")))


@pytest.fixture(scope="module")
def vector_art() -> dict[str, RGBImage]:
    """Western cartoon and clip-art heads: drawn, but not the anime styles."""
    return _images(sorted(ANIME.glob("openclipart_*.png")) + sorted(ANIME.glob("morevna_*.png")))


def _stats(images: dict[str, RGBImage]) -> dict[str, dict[str, float]]:
    return {name: measure(image) for name, image in images.items()}


def test_every_statistic_is_measured_and_finite(renpy: dict[str, RGBImage]) -> None:
    stats = measure(next(iter(renpy.values())))
    assert list(stats) == [s.name for s in STATISTICS]
    assert all(np.isfinite(v) for v in stats.values())


def test_anime_crops_are_more_colourful_than_photos(
    pc: dict[str, RGBImage], renpy: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    anime = _stats(pc) | _stats(renpy)
    photos = _stats(london)
    for name in ("chroma", "colourful_fraction"):
        least_anime = min(s[name] for s in anime.values())
        most_photo = max(s[name] for s in photos.values())
        # Painted skin and hair against studio skin: no overlap at all, with room to spare.
        assert least_anime > 2 * most_photo, name


def test_flat_fraction_and_palette_tell_anime_crops_from_studio_photos(
    pc: dict[str, RGBImage], renpy: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    anime = _stats(pc) | _stats(renpy)
    photos = _stats(london)
    # A London portrait is mostly flat grey backdrop, so it is the *flatter* one; the
    # statistic still separates the two sets, which is what the per-style z-score uses.
    assert min(s["flat_fraction"] for s in photos.values()) > max(
        s["flat_fraction"] for s in anime.values()
    )
    # Hair gradients and coloured line art need more colours than a grey-and-skin photo.
    assert np.median([s["palette_size"] for s in anime.values()]) > 1.5 * np.median(
        [s["palette_size"] for s in photos.values()]
    )


def test_cel_shaded_sprites_are_cleaner_than_photos(
    renpy: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    sprites, photos = _stats(renpy), _stats(london)
    assert max(s["fine_noise"] for s in sprites.values()) * 2 < min(
        s["fine_noise"] for s in photos.values()
    )


def test_robust_z_uses_the_floor_when_references_agree() -> None:
    assert robust_z([1.0, 1.0, 1.0, 1.0], 2.0, floor=0.5) == pytest.approx(2.0)
    # One wild value among five moves neither the median nor the MAD.
    assert robust_z([1.0, 1.1, 0.9, 1.0, 50.0], 1.0, floor=0.01) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="floor"):
        robust_z([1.0], 1.0, floor=0.0)


@pytest.mark.parametrize("style", ["pc", "renpy"])
@pytest.mark.parametrize("photo", ["london_004_neutral.jpg", "london_017_neutral.jpg"])
def test_a_photo_among_anime_crops_is_the_only_outlier(
    style: str,
    photo: str,
    request: pytest.FixtureRequest,
    london: dict[str, RGBImage],
) -> None:
    crops: dict[str, RGBImage] = request.getfixturevalue(style)
    batch = _stats(crops) | {photo: measure(london[photo])}
    verdicts = dict(
        zip(batch, judge(list(batch.values()), [], z_limit=Z_LIMIT, min_size=MIN_SIZE), strict=True)
    )
    flagged = {name for name, v in verdicts.items() if v.is_outlier}
    assert flagged == {photo}
    assert verdicts[photo].detail is not None
    named = set(verdicts[photo].outliers)
    assert named & {"chroma", "colourful_fraction"}, verdicts[photo].detail
    assert all(abs(z) > Z_LIMIT for z in verdicts[photo].outliers.values())


def test_every_london_photo_is_an_outlier_of_both_styles(
    pc: dict[str, RGBImage], renpy: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    for crops in (pc, renpy):
        references = list(_stats(crops).values())
        for name, image in london.items():
            verdict = judge([measure(image)], references, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
            assert verdict.is_outlier, name


def test_vector_and_western_cartoon_art_are_outliers_of_both_styles(
    pc: dict[str, RGBImage], renpy: dict[str, RGBImage], vector_art: dict[str, RGBImage]
) -> None:
    for crops in (pc, renpy):
        references = list(_stats(crops).values())
        for name, image in vector_art.items():
            verdict = judge([measure(image)], references, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
            assert verdict.is_outlier, name


def test_a_pencil_sketch_is_an_outlier_of_the_coloured_style(pc: dict[str, RGBImage]) -> None:
    pencil = measure(_load(ANIME / PENCIL))
    verdict = judge([pencil], list(_stats(pc).values()), z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
    assert {"chroma", "colourful_fraction"} <= set(verdict.outliers)


def test_a_small_style_is_not_judged(
    renpy: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    few = list(_stats(renpy).values())[:2]
    photo = measure(london["london_004_neutral.jpg"])
    verdicts = judge([photo, *few], [], z_limit=Z_LIMIT, min_size=MIN_SIZE)
    assert all(v.score is None and not v.is_outlier for v in verdicts)
    assert all("not judged" in (v.detail or "") for v in verdicts)


@pytest.mark.parametrize("style", ["pc", "renpy"])
def test_matching_moves_a_photo_onto_the_style_palette(
    style: str, request: pytest.FixtureRequest, london: dict[str, RGBImage]
) -> None:
    crops: dict[str, RGBImage] = request.getfixturevalue(style)
    palette = Palette.pooled(list(crops.values()))
    photo = london["london_004_neutral.jpg"]
    before = cdf_distance(photo, palette)
    matched = match_histogram(photo, palette)
    after = cdf_distance(matched, palette)
    assert matched.shape == photo.shape
    assert before > 10  # levels: a pale studio photo is far from painted colours
    assert after < before / 4


def test_matching_an_image_onto_its_own_palette_keeps_it(renpy: dict[str, RGBImage]) -> None:
    image = renpy["renpy_sylvie_blue_normal_face.png"]
    matched = match_histogram(image, Palette.pooled([image]))
    assert np.abs(matched.astype(int) - image.astype(int)).mean() < 2.0


def test_square_pad_centres_a_tall_region_on_its_border_colour() -> None:
    region = np.full((300, 100, 3), 255, dtype=np.uint8)
    region[100:200, 25:75] = (200, 30, 30)
    square = square_pad(region)
    assert square.shape == (300, 300, 3)
    assert (square[:, :100] == 255).all()
    assert (square[:, 200:] == 255).all()
    assert (square[150, 125:175] == (200, 30, 30)).all()


def test_training_image_is_a_512_square_matched_to_the_palette(
    pc: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    palette = Palette.pooled(list(pc.values()))
    tall = london["london_001_neutral.jpg"][:, 100:400]
    train = training_image(tall, palette)
    assert train.shape == (TRAINING_SIDE, TRAINING_SIDE, 3)
    assert cdf_distance(train, palette) < cdf_distance(training_image(tall, None), palette) / 4
