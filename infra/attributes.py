"""Declared attributes for ``s2a publish --attributes FILE``, one row per image file.

Two layouts are read, told apart by the first line:

* a CSV with a header row, keyed by its first column (the file's name, or its path under
  the folder given to ``publish``), e.g. ``file,gender,age,glasses,hair_colour``;
* CelebA's ``list_attr_celeba.txt``: the number of rows, then the column names, then
  ``000001.jpg -1 1 ...`` (whitespace-separated, flags as -1/1).

Columns are matched by name, case and ``_``/``-``/space aside. What maps onto the upload
contract's :class:`~schemas.uploads.DeclaredAttributes` (stored as ``declared`` labels):

=================================  ===========================================================
``gender``                         text, as declared (the label stage maps its spellings)
``male`` (CelebA ``Male``)         flag: ``male`` or ``female``
``age``                            whole years (13 to 120, the contract's range)
``glasses``, ``eyeglasses``        flag
``hair_colour``, ``hair_color``    text, as declared
``black_hair``, ``blond_hair``,    flags: the one set gives ``black``, ``blond``, ``brown``
``brown_hair``, ``gray_hair``      or ``grey``; none or several set give no hair colour
``smiling`` (CelebA ``Smiling``)   flag: expression ``smiling`` (set) or ``neutral`` (unset)
``expression``                     text, one of the vocabulary's ``neutral``, ``smiling``,
                                   ``other``
=================================  ===========================================================

Flags are ``1``/``-1`` (CelebA), ``1``/``0``, ``yes``/``no``, ``true``/``false``; an empty
cell declares nothing. CelebA's ``Smiling`` unset means "not smiling", which its faces
mostly are as ``neutral``; a face that is neither (a frown, a scream) would need a human to
say ``other``. An ``expression`` column wins over a ``smiling`` one on the same row.

``young`` (CelebA) is recognised and ignored, named as not carried like unknown columns:
it is an annotator's impression of youth with no age behind it, while the contract takes
an age in years and the vocabulary age bands; no band follows from it honestly (a "young"
face may be 15 or 35). A file with no row declares nothing; a malformed file, row or value
is a :class:`~infra.errors.UsageError` naming ``--attributes``, the line and the column,
raised before anything is published.

Example::

    table = read_attributes(Path("list_attr_celeba.txt"))
    table.for_file(Path("img/000001.jpg"), root=Path("img"))   # DeclaredAttributes | None
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, get_args

from pydantic import ValidationError

from infra.errors import UsageError
from schemas.uploads import DeclaredAttributes, Expression

OPTION: Final = "--attributes"

_HAIR_FLAGS: Final[dict[str, str]] = {
    "black_hair": "black",
    "blond_hair": "blond",
    "brown_hair": "brown",
    "gray_hair": "grey",
}
_TEXT_COLUMNS: Final[dict[str, str]] = {
    "gender": "gender",
    "hair_colour": "hair_colour",
    "hair_color": "hair_colour",
}
_FLAG_COLUMNS: Final[dict[str, str]] = {"glasses": "glasses", "eyeglasses": "glasses"}
#: The expression vocabulary (:data:`schemas.labels.VALUES`), as the contract takes it.
_EXPRESSIONS: Final = frozenset(get_args(Expression))
#: Recognised, with no field in the upload contract to carry them honestly (see above).
NOT_CARRIED: Final = frozenset({"young"})
KNOWN: Final = frozenset(
    {
        "age",
        "male",
        "smiling",
        "expression",
        *_HAIR_FLAGS,
        *_TEXT_COLUMNS,
        *_FLAG_COLUMNS,
        *NOT_CARRIED,
    }
)
_TRUE: Final = frozenset({"1", "+1", "yes", "y", "true", "t"})
_FALSE: Final = frozenset({"-1", "0", "no", "n", "false", "f"})


def _column(name: str) -> str:
    """``"Hair-Colour "`` -> ``"hair_colour"``: the form columns are matched in."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@dataclass(frozen=True, slots=True)
class AttributeTable:
    """The declared attributes of each file named in an attributes file.

    ``rows`` is keyed by the file name as the file writes it; ``ignored`` names the
    unknown columns and ``not_carried`` the recognised ones the upload contract has no
    field for (:data:`NOT_CARRIED`), both in file order.
    """

    source: Path
    rows: dict[str, DeclaredAttributes] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    not_carried: tuple[str, ...] = ()

    def for_file(self, path: Path, root: Path) -> DeclaredAttributes | None:
        """The row of ``path``: by its path under ``root`` (``a/b.jpg``), else by its
        name alone (``b.jpg``); None when the file has no row."""
        if path.is_relative_to(root):
            row = self.rows.get(path.relative_to(root).as_posix())
            if row is not None:
                return row
        return self.rows.get(path.name)


def read_attributes(path: Path) -> AttributeTable:
    """Read a CSV or CelebA attribute file (see the module docstring).

    Raises :class:`~infra.errors.UsageError` naming ``--attributes`` for a file that
    cannot be read, has no header, repeats a file, or holds a value the contract refuses.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{OPTION} {path}: cannot be read: {exc}") from None
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise UsageError(f"{OPTION} {path}: the file is empty")
    if lines[first].strip().isdigit():
        header, records = _celeba(path, lines, first)
    else:
        header, records = _csv(path, text)
    columns = [_column(name) for name in header]
    ignored = tuple(n for n, c in zip(header, columns, strict=True) if c not in KNOWN)
    not_carried = tuple(n for n, c in zip(header, columns, strict=True) if c in NOT_CARRIED)
    rows: dict[str, DeclaredAttributes] = {}
    first_line: dict[str, int] = {}
    for line_no, key, values in records:
        if key in rows:
            raise UsageError(
                f"{OPTION} {path} line {line_no}: {key} already has a row (line {first_line[key]})"
            )
        rows[key] = _declared(path, line_no, dict(zip(columns, values, strict=True)))
        first_line[key] = line_no
    return AttributeTable(source=path, rows=rows, ignored=ignored, not_carried=not_carried)


_Record = tuple[int, str, list[str]]
"""(line number, file key, one value per attribute column)"""


def _celeba(path: Path, lines: Sequence[str], first: int) -> tuple[list[str], list[_Record]]:
    """CelebA's layout: a count, the column names, then ``name v1 v2 ...`` rows."""
    count = lines[first].strip()
    try:
        declared = int(count)
    except ValueError:  # a digit int() does not take ('²'), or more digits than it reads
        raise UsageError(
            f"{OPTION} {path} line {first + 1}: {count[:20]!r} is not a number of rows "
            "(CelebA layout: count, column names, rows)"
        ) from None
    header_at = next((i for i in range(first + 1, len(lines)) if lines[i].strip()), None)
    if header_at is None:
        raise UsageError(f"{OPTION} {path}: a count on line {first + 1} but no column names")
    header = lines[header_at].split()
    records: list[_Record] = []
    for i in range(header_at + 1, len(lines)):
        cells = lines[i].split()
        if not cells:
            continue
        if len(cells) != len(header) + 1:
            raise UsageError(
                f"{OPTION} {path} line {i + 1}: {len(cells)} fields, expected a file name "
                f"and {len(header)} values (CelebA layout: count, column names, rows)"
            )
        records.append((i + 1, cells[0], cells[1:]))
    if len(records) != declared:
        raise UsageError(
            f"{OPTION} {path}: line {first + 1} announces {declared} rows, the file has "
            f"{len(records)} (truncated?)"
        )
    return header, records


def _csv(path: Path, text: str) -> tuple[list[str], list[_Record]]:
    """A CSV with a header row; the first column names the file."""
    reader = csv.reader(io.StringIO(text))
    rows: Iterator[list[str]] = iter(reader)
    try:
        header = next(rows)
        while not any(cell.strip() for cell in header):
            header = next(rows)
    except StopIteration:
        raise UsageError(f"{OPTION} {path}: no header row") from None
    except csv.Error as exc:
        raise UsageError(f"{OPTION} {path}: not a CSV file: {exc}") from None
    if len(header) < 2:
        raise UsageError(
            f"{OPTION} {path}: the header has {len(header)} column; expected the file name "
            "column and at least one attribute (e.g. file,gender,age)"
        )
    records: list[_Record] = []
    try:
        for cells in rows:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise UsageError(
                    f"{OPTION} {path} line {reader.line_num}: {len(cells)} fields, the "
                    f"header has {len(header)}"
                )
            key = cells[0].strip()
            if not key:
                raise UsageError(f"{OPTION} {path} line {reader.line_num}: no file name")
            records.append((reader.line_num, key, [c.strip() for c in cells[1:]]))
    except csv.Error as exc:
        raise UsageError(f"{OPTION} {path} line {reader.line_num}: {exc}") from None
    return header[1:], records


def _declared(path: Path, line_no: int, cells: dict[str, str]) -> DeclaredAttributes:
    """One row's cells (by matched column name) as the contract's declared attributes."""
    where = f"{OPTION} {path} line {line_no}"

    def flag(column: str) -> bool | None:
        value = cells.get(column, "").strip().lower()
        if not value:
            return None
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise UsageError(
            f"{where}: {column} is {value!r}; a flag is 1/-1, 1/0, yes/no or true/false"
        )

    values: dict[str, object] = {}
    for column, target in _TEXT_COLUMNS.items():
        if cells.get(column, "").strip():
            values[target] = cells[column].strip()
    male = flag("male")
    if male is not None and "gender" not in values:
        values["gender"] = "male" if male else "female"
    for column, target in _FLAG_COLUMNS.items():
        value = flag(column)
        if value is not None:
            values[target] = value
    set_hair = [colour for column, colour in _HAIR_FLAGS.items() if flag(column)]
    if len(set_hair) == 1 and "hair_colour" not in values:
        values["hair_colour"] = set_hair[0]
    expression = cells.get("expression", "").strip().lower()
    if expression:
        if expression not in _EXPRESSIONS:
            raise UsageError(
                f"{where}: expression is {expression!r}; expected one of "
                f"{', '.join(get_args(Expression))}"
            )
        values["expression"] = expression
    else:
        smiling = flag("smiling")
        if smiling is not None:
            values["expression"] = "smiling" if smiling else "neutral"
    age = cells.get("age", "").strip()
    if age:
        try:
            values["age"] = int(age)
        except ValueError:
            raise UsageError(f"{where}: age is {age!r}; expected whole years") from None
    try:
        return DeclaredAttributes.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise UsageError(f"{where}: {problems}") from None
