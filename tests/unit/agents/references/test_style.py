"""Style statistics, outlier judging and palette matching on the real test images.

Anime: the Pepper&Carrot and Ren'Py face crops in ``tests/data/anime`` (licenses in
``tests/data/SOURCES.csv``); photos: the London set in ``tests/data/real``; other art: the
Open Clip Art vector heads and Morevna cartoon renders. The labelled check set (recoloured
references, photos, tight photo crops, pencil sketches) is ``bench/style_check.py``'s.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from agents.records import RGBImage
from agents.references.palette import (
    TRAINING_SIDE,
    Palette,
    cdf_distance,
    match_histogram,
    square_pad,
    training_image,
)
from agents.references.style import (
    INDICES,
    PALETTE_MARGIN,
    STATISTICS,
    judge,
    measure,
    missing_statistics,
    robust_z,
)
from agents.stages.imageio import decode_image
from schemas.settings import LimitSettings, RefSettings

ROOT = Path(__file__).parents[4]
DATA = ROOT / "tests" / "data"
ANIME = DATA / "anime"
REAL = DATA / "real"
RENDERING = [s.name for s in STATISTICS if s.kind == "rendering"]
PALETTE = [s.name for s in STATISTICS if s.kind == "palette"]

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


@pytest.fixture(scope="module")
def check() -> ModuleType:
    """``bench/style_check.py``, the labelled check set and its evaluation."""
    spec = importlib.util.spec_from_file_location("style_check", ROOT / "bench" / "style_check.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check_rows(check: ModuleType) -> dict[tuple[str, str], Any]:
    """Every check-set image judged with the default settings (seed 0: deterministic)."""
    rows = check.evaluate(seed=0)
    return {(r.style, r.group): r for r in rows}


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


def test_drawn_edges_are_crisper_and_more_often_lines_than_photographed_ones(
    pc: dict[str, RGBImage], renpy: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    anime = _stats(pc) | _stats(renpy)
    photos = _stats(london)
    # Lens blur: photographed edges are softer, on the whole (whole portraits include the
    # crisp outline against a studio backdrop, so the ranges touch).
    assert np.median([s["edge_crispness"] for s in anime.values()]) > np.percentile(
        [s["edge_crispness"] for s in photos.values()], 90
    )
    # Ink outlines: every drawing has more thin dark lines than any whole portrait.
    assert min(s["line_density"] for s in anime.values()) > max(
        s["line_density"] for s in photos.values()
    )


@pytest.mark.parametrize("recolour", ["grey", "sepia", "chroma0.15", "dark0.3", "pale_black"])
def test_recolouring_a_drawing_barely_moves_its_rendering_statistics(
    recolour: str, renpy: dict[str, RGBImage], check: ModuleType
) -> None:
    """Rendering statistics are measured on stretched luminance: blind to a palette that
    keeps the order of lightness (a hue rotation does not: a dark blue outline turned
    yellow is light; the check set shows those references still pass)."""
    for image in list(renpy.values())[:4]:
        before, after = measure(image), measure(check.RECOLOURINGS[recolour](image))
        for stat in STATISTICS:
            if stat.kind == "rendering" and not stat.upward_only:
                # Within 4 floors: far under what a photo or a sketch moves them (20+).
                assert abs(after[stat.name] - before[stat.name]) < 4 * stat.floor, (
                    stat.name,
                    before[stat.name],
                    after[stat.name],
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
    # Decided by the rendering: it looks photographed, whatever its colours.
    assert "photographic" in verdicts[photo].outliers, verdicts[photo].detail
    assert not set(verdicts[photo].outliers) & set(PALETTE)
    assert all(abs(z) > Z_LIMIT for z in verdicts[photo].outliers.values())
    assert "photographic z=+" in (verdicts[photo].detail or "")


def test_every_london_photo_is_an_outlier_of_both_styles(
    pc: dict[str, RGBImage], renpy: dict[str, RGBImage], london: dict[str, RGBImage]
) -> None:
    for crops in (pc, renpy):
        references = list(_stats(crops).values())
        for name, image in london.items():
            verdict = judge([measure(image)], references, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
            assert verdict.is_outlier, name


def test_vector_and_western_cartoon_art_are_outliers_of_the_painted_style(
    pc: dict[str, RGBImage], renpy: dict[str, RGBImage], vector_art: dict[str, RGBImage]
) -> None:
    def caught(crops: dict[str, RGBImage]) -> set[str]:
        references = list(_stats(crops).values())
        return {
            name
            for name, image in vector_art.items()
            if judge([measure(image)], references, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0].is_outlier
        }

    assert caught(pc) == set(vector_art)
    # Cel shading is flat fills and crisp outlines too: two clip-art heads render like it
    # (their palette differs, which alone does not quarantine); the rest are caught.
    assert set(vector_art) - caught(renpy) == {
        "openclipart_adult_astrid_graeber_01.png",
        "openclipart_boy_astrid_graeber.png",
    }


def test_a_pencil_sketch_is_an_outlier_of_the_coloured_style(pc: dict[str, RGBImage]) -> None:
    pencil = measure(_load(ANIME / PENCIL))
    verdict = judge([pencil], list(_stats(pc).values()), z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
    # Caught for how it is drawn (paper, few tones, strokes), not for being grey.
    assert "sketched" in verdict.outliers, verdict.detail
    assert not set(verdict.outliers) & set(PALETTE)


def test_a_monochrome_drawing_of_the_style_is_not_an_outlier(pc: dict[str, RGBImage]) -> None:
    """The issue's case: black hair, pale skin, a white outfit, drawn in the style."""
    for name, image in pc.items():
        others = [measure(i) for n, i in pc.items() if n != name]
        grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
        verdict = judge([measure(grey)], others, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
        assert not verdict.is_outlier, (name, verdict.detail)


def _row(**stats: float) -> dict[str, float]:
    """A statistics row at the style's median, with ``stats`` overriding."""
    return {s.name: 1.0 for s in STATISTICS} | stats


def test_palette_alone_never_quarantines() -> None:
    style = [_row(chroma=20.0 + i) for i in range(10)]
    grey = _row(chroma=0.0, colourful_fraction=0.0, palette_size=8.0)
    verdict = judge([grey], style, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
    assert not verdict.is_outlier
    assert verdict.score == pytest.approx(0.0, abs=1e-6)


def test_palette_tips_a_borderline_photographic_lean() -> None:
    style = [_row(chroma=20.0 + i) for i in range(10)]
    photographic = next(i for i in INDICES if i.name == "photographic")
    # Every term of "photographic" 1.45 floors the photo way: composite ~3.2, in the margin.
    lean = {
        name: 1.0 + sign * 1.45 * next(s.floor for s in STATISTICS if s.name == name)
        for name, sign in photographic.terms
    }
    pale = _row(chroma=24.5, **lean)  # the style's colours
    assert not judge([pale], style, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0].is_outlier
    assert Z_LIMIT - PALETTE_MARGIN < 1.45 * np.sqrt(len(photographic.terms)) < Z_LIMIT
    tipped = judge([pale | {"chroma": 0.0}], style, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
    assert set(tipped.outliers) == {"chroma"}
    assert "borderline" in (tipped.detail or "")


def test_a_candidate_is_not_part_of_its_own_spread() -> None:
    """Judged against the pool without itself: an extreme value cannot widen the spread."""
    style = [_row(edge_crispness=2.8 + 0.01 * i) for i in range(5)]
    odd = _row(edge_crispness=2.0)
    verdict = judge([odd], style, z_limit=Z_LIMIT, min_size=MIN_SIZE)[0]
    assert verdict.outliers["edge_crispness"] < -Z_LIMIT


def test_references_measured_by_an_older_style_check_are_named() -> None:
    assert missing_statistics({"chroma": 20.0, "flat_fraction": 0.4}) == [
        s.name for s in STATISTICS if s.name != "chroma"
    ]
    assert missing_statistics(_row()) == []


# -- the labelled check set (bench/style_check.py) ---------------------------------------


@pytest.mark.parametrize("style", ["renpy", "pc"])
def test_no_same_style_reference_or_recolouring_is_quarantined(
    style: str, check_rows: dict[tuple[str, str], Any]
) -> None:
    for group in ("reference", "recoloured"):
        row = check_rows[(style, group)]
        assert row.total > 0
        assert row.wrong == [], (style, group)


@pytest.mark.parametrize("style", ["renpy", "pc"])
def test_tight_photo_crops_photos_and_sketches_are_caught(
    style: str, check_rows: dict[tuple[str, str], Any]
) -> None:
    crops = check_rows[(style, "photo_crop")]
    assert crops.total == 21
    assert crops.rate >= 0.95, crops.wrong
    for group in ("photo", "photo_crop_grey", "pencil", "sketch", "sketch_cv", "sketch_photo"):
        row = check_rows[(style, group)]
        assert row.rate >= 0.95, (group, row.wrong)


def test_the_check_set_judges_with_the_settings_limit(check: ModuleType) -> None:
    assert RefSettings().outlier_z == Z_LIMIT
    assert RefSettings().min_style_size == MIN_SIZE
    assert set(RENDERING) >= {t for i in INDICES for t, _ in i.terms}


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
