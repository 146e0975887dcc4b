"""What ``s2a refs add`` is given: files and folders, their license and credit (from the
command line or a sources CSV), and a face box.

Example::

    sources = read_sources(Path("refs/SOURCES.csv"))
    license, full_text = normalise_license("MIT/Expat (Ren'Py license: ...)")   # 'MIT', ...
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agents.errors import InvalidRequest, SourcesFileError

#: Licenses that ask for no credit; every other one needs an author.
NO_CREDIT_NEEDED = frozenset({"CC0-1.0", "public-domain"})
_SOURCES_COLUMNS = ("file", "license", "author", "source")


@dataclass(frozen=True, slots=True)
class Attribution:
    """License and credit of a reference as given (the license not yet normalised)."""

    license: str | None = None
    source: str | None = None
    author: str | None = None

    def over(self, base: Attribution) -> Attribution:
        """These values where set, ``base``'s elsewhere (command line over the CSV)."""
        return Attribution(
            license=self.license or base.license,
            source=self.source or base.source,
            author=self.author or base.author,
        )


@dataclass(frozen=True, slots=True)
class Box:
    """A face region ``x1, y1, x2, y2`` in the pixels of the (upright) image."""

    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def parse(cls, text: str) -> Box:
        """``"x1,y1,x2,y2"`` -> Box, or :class:`InvalidRequest` saying what is wrong."""
        parts = [p.strip() for p in text.split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise InvalidRequest(
                f"box {text!r} is not four numbers x1,y1,x2,y2 (pixels), e.g. 40,30,296,286"
            )
        x1, y1, x2, y2 = values
        if x2 <= x1 or y2 <= y1:
            raise InvalidRequest(f"box {text!r} has x2 <= x1 or y2 <= y1; give x1,y1,x2,y2")
        return cls(x1, y1, x2, y2)

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True, slots=True)
class RefInput:
    """One reference image given as bytes rather than a path (``name`` is only reported).

    Example::

        RefInput("pepper.png", png_bytes, Attribution("CC-BY-4.0", "peppercarrot.com", "D. Revoy"))
    """

    name: str
    data: bytes
    attribution: Attribution = field(default_factory=Attribution)


_LICENSE_ALIASES = {
    "MIT": "MIT",
    "EXPAT": "MIT",
    "MIT/EXPAT": "MIT",
    "PUBLIC-DOMAIN": "public-domain",
    "PUBLICDOMAIN": "public-domain",
    "PD": "public-domain",
    "CC0": "CC0-1.0",
    "CC-0": "CC0-1.0",
    "CC0-1.0": "CC0-1.0",
}
_CC_PATTERN = re.compile(r"^CC-(BY(?:-NC)?(?:-SA|-ND)?)-(\d\.\d)$")


def normalise_license(text: str) -> tuple[str, str | None]:
    """``(SPDX-style id, full text)`` of a license as people write it.

    The id comes from the text before any parenthesis: ``"MIT/Expat (Ren'Py license:
    ...)"`` -> ``("MIT", "<the whole text>")``, ``"Public domain (...)"`` ->
    ``"public-domain"``, ``"CC BY 4.0"`` -> ``"CC-BY-4.0"``. The full text comes back only
    when it says more than the id, to be kept as attribution detail. An unknown license
    keeps its own spelling (and is then refused unless the policy allows it).
    """
    full = " ".join(text.split())
    # Spaces go with the punctuation: "MIT ;" is "MIT", not "MIT " (refused as unknown).
    head = full.split("(", 1)[0].strip().rstrip(";,: ")
    key = re.sub(r"[\s_]+", "-", head.upper())
    if key in _LICENSE_ALIASES:
        spdx = _LICENSE_ALIASES[key]
    elif match := _CC_PATTERN.match(key):
        spdx = f"CC-{match.group(1)}-{match.group(2)}"
    else:
        spdx = head
    return spdx, (full if full != spdx else None)


def read_sources(path: Path) -> dict[str, Attribution]:
    """Per-file attribution from a CSV with at least ``file,license,author,source``.

    Keys are the ``file`` values as written and their base names, so a row matches a
    file however it was named on the command line; a name as a row writes it wins over
    another row's base name. Two rows for one name with different values make the name
    ambiguous: it matches neither. A file that cannot be read, or lacks a column, is a
    :class:`SourcesFileError`.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _SOURCES_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise SourcesFileError(
                    f"--sources {path}: missing column(s) {', '.join(missing)}; the CSV needs "
                    f"a header with at least {', '.join(_SOURCES_COLUMNS)}"
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourcesFileError(f"--sources {path}: cannot read it: {exc}") from exc
    # Names as written and base names apart: "a.png" written by one row must not be lost
    # to another row's "x/a.png" (found by fuzzing: both were dropped as a clash).
    written: dict[str, Attribution] = {}
    bases: dict[str, Attribution] = {}
    clashes: list[tuple[dict[str, Attribution], str]] = []
    for row in rows:
        name = (row.get("file") or "").strip()
        if not name:
            continue
        value = Attribution(
            license=(row.get("license") or "").strip() or None,
            source=(row.get("source") or "").strip() or None,
            author=(row.get("author") or "").strip() or None,
        )
        for found, key in ((written, name), (bases, Path(name).name)):
            if key in found and found[key] != value:
                clashes.append((found, key))
            found[key] = value
    for found, key in clashes:
        # A name shared by two different rows matches neither.
        found.pop(key, None)
    return {**bases, **written}


def sources_for(name: str, sources: Mapping[str, Attribution]) -> Attribution:
    return sources.get(name) or sources.get(Path(name).name) or Attribution()
