"""Properties of the CSV and license inputs people hand the command line:
``s2a publish --attributes`` (:func:`infra.attributes.read_attributes`) and ``s2a refs
add --sources/--license/--box`` (:func:`agents.references.inputs.read_sources`,
:func:`~agents.references.inputs.normalise_license`,
:func:`agents.references.admission.check_license`,
:meth:`~agents.references.inputs.Box.parse`).

Whatever the text (or bytes), each returns a well-formed value or raises its own error
naming the option (``UsageError`` for ``--attributes``, ``SourcesFileError`` for
``--sources``, ``LicenseRefused`` with a reason, ``InvalidRequest`` for ``--box``), never
another exception; and well-formed files read back exactly what was written.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Final

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agents.errors import InvalidRequest, LicenseRefused, SourcesFileError
from agents.references.admission import check_license
from agents.references.inputs import Attribution, Box, normalise_license, read_sources
from infra.attributes import KNOWN, AttributeTable, read_attributes
from infra.errors import UsageError
from schemas.reasons import RefReason
from schemas.settings import RefSettings
from schemas.uploads import DeclaredAttributes

DATA: Final = Path(__file__).resolve().parents[2] / "data"
SOURCES_CSV: Final = (DATA / "SOURCES.csv").read_text(encoding="utf-8")
REFS: Final = RefSettings()

#: Cells people put in attribute files: valid values, near misses and arbitrary text.
_CELLS = st.one_of(
    st.sampled_from(
        [
            *("", "1", "-1", "0", "+1", "yes", "No", "TRUE", "f", "2", "13", "120", "12", "121"),
            *("female", "male", "smiling", "neutral", "other", "frown", "1e3", "٣٤", "²", " 30 "),
        ]
    ),
    st.text(max_size=12),
)
_COLUMNS = st.one_of(
    st.sampled_from(sorted(KNOWN)).map(lambda c: c.replace("_", st_sep(c))),
    st.sampled_from(["Hair Colour", "Eyeglasses", "Male", "Smiling", "Young", "file"]),
    st.text(max_size=10),
)


def st_sep(column: str) -> str:
    """A separator people use between the words of a column name (stable per column)."""
    return ("_", "-", " ")[len(column) % 3]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, rewritten by every example (a module-scoped folder: Hypothesis runs many
    examples per test function)."""
    return tmp_path_factory.mktemp("fuzz-inputs") / "input.csv"


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


# --- --attributes ------------------------------------------------------------------------


def attributes_or_usage_error(path: Path) -> AttributeTable | UsageError:
    outcome: AttributeTable | UsageError
    try:
        outcome = read_attributes(path)
    except UsageError as exc:  # anything else fails the property
        outcome = exc
    if isinstance(outcome, UsageError):
        assert str(outcome).startswith(f"--attributes {path}")
        return outcome
    table = outcome
    for key, row in table.rows.items():
        assert key
        assert key == key.strip()
        assert isinstance(row, DeclaredAttributes)
    return table


@settings(max_examples=settings.default.max_examples * 2)
@given(text=st.text(max_size=300))
@example(text="²\nfile male\n")
@example(text="9" * 5000 + "\nmale\n")
@example(text="\ufeff1\nMale Smiling\na.jpg 1 -1\n")
@example(text='file,age\n"a.jpg,1\n')
@example(text="file,age\na.jpg,\x00\n")
def test_any_attributes_text_is_a_table_or_a_usage_error(scratch: Path, text: str) -> None:
    scratch.write_text(text, encoding="utf-8")
    attributes_or_usage_error(scratch)


@settings(max_examples=settings.default.max_examples)
@given(data=st.binary(max_size=200))
def test_any_attributes_bytes_are_a_table_or_a_usage_error(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    attributes_or_usage_error(scratch)


@settings(max_examples=settings.default.max_examples * 2)
@given(
    header=st.lists(_COLUMNS, min_size=1, max_size=6),
    rows=st.lists(st.lists(_CELLS, min_size=0, max_size=7), max_size=5),
)
def test_attribute_csvs_with_odd_cells_are_a_table_or_a_usage_error(
    scratch: Path, header: list[str], rows: list[list[str]]
) -> None:
    scratch.write_text(_csv_text([["file", *header], *rows]), encoding="utf-8")
    attributes_or_usage_error(scratch)


@settings(max_examples=settings.default.max_examples * 2)
@given(
    count=st.integers(0, 6),
    header=st.lists(st.sampled_from(["Male", "Smiling", "Eyeglasses", "Young", "Black_Hair"])),
    rows=st.lists(
        st.tuples(
            st.from_regex(r"\A[0-9]{6}\.jpg\Z"), st.lists(_CELLS.filter(lambda c: " " not in c))
        ),
        max_size=5,
    ),
)
def test_celeba_layouts_are_a_table_or_a_usage_error(
    scratch: Path, count: int, header: list[str], rows: list[tuple[str, list[str]]]
) -> None:
    lines = [str(count), " ".join(header)]
    lines += [" ".join([name, *(c or "1" for c in cells)]) for name, cells in rows]
    scratch.write_text("\n".join(lines) + "\n", encoding="utf-8")
    attributes_or_usage_error(scratch)


_names = st.from_regex(r"\A[a-z0-9][a-z0-9_/-]{0,20}\.jpg\Z")
_words = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=32)


@settings(max_examples=settings.default.max_examples)
@given(
    rows=st.dictionaries(
        _names,
        st.tuples(st.none() | st.integers(13, 120), st.none() | st.booleans(), st.none() | _words),
        min_size=1,
        max_size=6,
    ),
)
def test_a_well_formed_attribute_csv_reads_back_what_was_written(
    scratch: Path, rows: dict[str, tuple[int | None, bool | None, str | None]]
) -> None:
    flag = {True: "yes", False: "no", None: ""}
    lines = [["file", "age", "glasses", "gender"]]
    lines += [
        [name, "" if age is None else str(age), flag[glasses], gender or ""]
        for name, (age, glasses, gender) in rows.items()
    ]
    scratch.write_text(_csv_text(lines), encoding="utf-8")
    table = read_attributes(scratch)
    assert table.rows == {
        name: DeclaredAttributes(age=age, glasses=glasses, gender=gender)
        for name, (age, glasses, gender) in rows.items()
    }


# --- --sources, --license, --box ---------------------------------------------------------


def sources_or_error(path: Path) -> dict[str, Attribution] | SourcesFileError:
    outcome: dict[str, Attribution] | SourcesFileError
    try:
        outcome = read_sources(path)
    except SourcesFileError as exc:  # anything else fails the property
        outcome = exc
    if isinstance(outcome, SourcesFileError):
        assert str(outcome).startswith(f"--sources {path}")
        return outcome
    found = outcome
    for key, value in found.items():
        assert key
        assert key == key.strip()
        for text in (value.license, value.source, value.author):
            assert text is None or (text and text == text.strip())
    return found


_line_edits = st.lists(
    st.tuples(
        st.sampled_from(["drop", "repeat", "swap", "insert", "cut", "quote"]),
        st.integers(0, 1_000),
        st.text(max_size=20),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=settings.default.max_examples * 2)
@given(edits=_line_edits)
def test_a_damaged_sources_csv_is_read_or_refused(
    scratch: Path, edits: list[tuple[str, int, str]]
) -> None:
    lines = SOURCES_CSV.splitlines(keepends=True)[:8]
    for kind, at, text in edits:
        i = at % len(lines) if lines else 0
        if kind == "drop" and lines:
            del lines[i]
        elif kind == "repeat" and lines:
            lines.insert(i, lines[i])
        elif kind == "swap" and len(lines) > 1:
            lines[0], lines[i] = lines[i], lines[0]
        elif kind == "insert":
            lines.insert(i, text + "\n")
        elif kind == "cut" and lines:
            lines[i] = lines[i][: at % (len(lines[i]) + 1)]
        elif kind == "quote" and lines:
            lines[i] = '"' + lines[i]
    scratch.write_text("".join(lines), encoding="utf-8")
    sources_or_error(scratch)


@settings(max_examples=settings.default.max_examples)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
@example(text=b"file,license,author,source\n\xff\n")
@example(text="file,license,author,source\na.png,MIT,x,y,extra,cells\nb.png\n")
def test_any_sources_text_is_read_or_refused(scratch: Path, text: str | bytes) -> None:
    if isinstance(text, bytes):
        scratch.write_bytes(text)
    else:
        scratch.write_text(text, encoding="utf-8")
    sources_or_error(scratch)


@settings(max_examples=settings.default.max_examples)
@given(
    rows=st.dictionaries(
        _names, st.tuples(st.sampled_from(REFS.allowed_licenses), _words, _words), max_size=6
    )
)
@example(rows={"1.jpg": ("MIT", "A", "a"), "0/1.jpg": ("MIT", "B", "b")})
def test_a_well_formed_sources_csv_reads_back_what_was_written(
    scratch: Path, rows: dict[str, tuple[str, str, str]]
) -> None:
    lines = [["file", "license", "author", "source"]]
    lines += [[name, *values] for name, values in rows.items()]
    scratch.write_text(_csv_text(lines), encoding="utf-8")
    found = read_sources(scratch)
    for name, (license_id, author, source) in rows.items():
        assert found[name] == Attribution(license=license_id, source=source, author=author)


_SPELLINGS = st.tuples(
    st.sampled_from(REFS.allowed_licenses),
    st.sampled_from([str.upper, str.lower, str.title, str]),
    st.sampled_from(["-", " ", "_"]),
    st.sampled_from(["", " ", ";", " ;", ":", " (full text, v2)", "; (see LICENSE)"]),
)


@settings(max_examples=settings.default.max_examples)
@given(_SPELLINGS)
def test_allowed_licenses_are_recognised_however_they_are_written(
    spelling: tuple[str, object, str, str],
) -> None:
    license_id, case, separator, tail = spelling
    written = case(license_id.replace("-", separator)) + tail  # type: ignore[operator]
    assert check_license(Attribution(license=written, author="A. Author"), REFS)[0] == license_id


@settings(max_examples=settings.default.max_examples * 3)
@given(text=st.text(max_size=80))
@example(text="MIT ;")
@example(text="CC-BY-4.0 :")
def test_a_license_normalises_to_a_fixed_point(text: str) -> None:
    license_id, full = normalise_license(text)
    assert full is None or full == " ".join(text.split())
    assert license_id == license_id.strip()
    # Normalising the id again changes nothing: the id is what was recognised.
    assert normalise_license(license_id)[0] == license_id


@settings(max_examples=settings.default.max_examples * 2)
@given(license=st.none() | st.text(max_size=40), author=st.none() | st.text(max_size=10))
def test_any_license_is_allowed_or_refused_with_a_reason(
    license: str | None, author: str | None
) -> None:
    outcome: tuple[str, str | None] | LicenseRefused
    try:
        outcome = check_license(Attribution(license=license, author=author), REFS)
    except LicenseRefused as exc:  # anything else fails the property
        outcome = exc
    if isinstance(outcome, LicenseRefused):
        assert outcome.reason in (
            RefReason.LICENSE_MISSING,
            RefReason.LICENSE_NOT_ALLOWED,
            RefReason.ATTRIBUTION_MISSING,
        )
    else:
        assert outcome[0] in REFS.allowed_licenses


@settings(max_examples=settings.default.max_examples * 2)
@given(
    text=st.text(max_size=40)
    | st.lists(
        st.floats() | st.integers().map(str) | st.text(max_size=4), min_size=3, max_size=5
    ).map(lambda parts: ",".join(map(str, parts)))
)
@example(text="nan,0,1,1")
@example(text="0,0,1e400,1")
@example(text="0 , 0 , 10 , 10")
def test_any_box_is_four_ordered_numbers_or_invalid(text: str) -> None:
    try:
        box = Box.parse(text)
    except InvalidRequest:
        return
    assert all(math.isfinite(v) for v in box.as_list())
    assert box.x1 < box.x2
    assert box.y1 < box.y2


# --- what the properties found -----------------------------------------------------------


@pytest.mark.parametrize("count", ["²", "9" * 5000])
def test_a_count_line_int_cannot_read_is_a_usage_error(scratch: Path, count: str) -> None:
    """Found by the property above: '²' passes str.isdigit() but not int(), and int()
    refuses more than 4300 digits; both escaped as a bare ValueError."""
    scratch.write_text(f"{count}\nMale\na.jpg 1\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"line 1: .* is not a number of rows"):
        read_attributes(scratch)


def test_a_space_before_trailing_punctuation_is_not_part_of_the_license() -> None:
    """Found by the property above: 'MIT ;' normalised to 'MIT ' and was refused."""
    assert normalise_license("MIT ;") == ("MIT", "MIT ;")
    assert check_license(Attribution(license="CC-BY-4.0 :", author="A"), REFS)[0] == "CC-BY-4.0"


def test_a_name_as_written_wins_over_another_rows_base_name(scratch: Path) -> None:
    """Found by the round-trip property: a row for '1.jpg' and one for 'x/1.jpg' made
    '1.jpg' ambiguous, so the file given as '1.jpg' lost its license and credit."""
    scratch.write_text("file,license,author,source\n1.jpg,MIT,A,a\nx/1.jpg,MIT,B,b\n")
    found = read_sources(scratch)
    assert found["1.jpg"] == Attribution(license="MIT", source="a", author="A")
    assert found["x/1.jpg"] == Attribution(license="MIT", source="b", author="B")
    scratch.write_text("file,license,author,source\na/1.jpg,MIT,A,a\nb/1.jpg,MIT,B,b\n")
    assert "1.jpg" not in read_sources(scratch)  # a base name of two rows matches neither
