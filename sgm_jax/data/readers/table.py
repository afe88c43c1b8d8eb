"""Rows of a .csv, .tsv, .xlsx or .jsonl file as text cells, with their columns checked against a schema.

Rows are numbered as a spreadsheet shows them (the header is the first non-blank row, usually
row 1; a cell holding several lines is still one row); JSONL rows are named by their line.
A column the schema does not know is an error, so a misspelt `lable` cannot silently drop labels.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from sgm_jax.data.samples import DatasetError, jsonl_objects, utf8_lines

TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".jsonl")


class Row(NamedTuple):
    where: str  # "<file>: row <N>" or "<file>:<line>", for messages
    number: int  # N: the spreadsheet row or the JSONL line
    values: dict[str, str]  # every column of the schema, '' where absent or empty


def _text(value: Any, where: str, column: str) -> str:
    """A cell as text; spreadsheets store 1 as 1.0 and JSONL may hold numbers, so whole numbers read back as '1'."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, (list, dict)):
        raise DatasetError(f"{where}: {column!r} must be text or a number, got {type(value).__name__}")
    return str(value)


def _suffix(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in TABLE_SUFFIXES:
        raise DatasetError(
            f"{path}: cannot read {suffix or 'a file without a suffix'} here (expected one of {list(TABLE_SUFFIXES)})"
        )
    return suffix


def _delimited(path: str, delimiter: str) -> Iterator[list[Any]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            yield from csv.reader(utf8_lines(f, path), delimiter=delimiter)
        except csv.Error as err:
            raise DatasetError(f"{path}: not a readable {'CSV' if delimiter == ',' else 'TSV'} file ({err})") from None


def _xlsx(path: str) -> Iterator[list[Any]]:
    try:
        import openpyxl
    except ImportError:
        raise DatasetError(
            f'{path}: reading .xlsx needs openpyxl: pip install "sgm-jax[xlsx]" (or save the sheet as .csv)'
        ) from None
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:
        raise DatasetError(f"{path}: not a readable .xlsx workbook ({err})") from None
    try:
        if len(workbook.sheetnames) != 1:
            raise DatasetError(
                f"{path}: has sheets {workbook.sheetnames}; save the one to read as a workbook "
                "of its own so no sheet is left out unnoticed"
            )
        for row in workbook.worksheets[0].iter_rows(values_only=True):
            yield list(row)
    finally:
        workbook.close()


def _grid(path: str, suffix: str) -> Iterator[list[Any]]:
    if suffix == ".xlsx":
        return _xlsx(path)
    return _delimited(path, "\t" if suffix == ".tsv" else ",")


def _blank(cells: Sequence[Any]) -> bool:
    return all(c is None or (isinstance(c, str) and not c.strip()) for c in cells)


def _header(where: str, cells: list[Any]) -> list[str | None]:
    """Column names; a nameless column is allowed only if every cell under it is empty (spreadsheets pad so)."""
    names = [None if _blank([c]) else str(c).strip() for c in cells]
    seen = set()
    for name in names:
        if name is not None and name in seen:
            raise DatasetError(f"{where}: column {name!r} appears twice")
        seen.add(name)
    return names


def check_columns(
    columns: Sequence[str], required: Sequence[str], optional: Sequence[str], where: str, what: str
) -> None:
    """Refuse missing and unknown columns, naming them and the columns the format knows."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise DatasetError(f"{where}: missing columns {missing} (a {what} file needs {list(required)})")
    unknown = [c for c in columns if c not in required and c not in optional]
    if unknown:
        raise DatasetError(
            f"{where}: unknown columns {unknown} (a {what} file has {list(required)} and optionally {list(optional)})"
        )


def columns(path: str) -> list[str]:
    """The column names of a table (a JSONL file's first object's keys), to tell which format it is."""
    suffix = _suffix(path)
    if suffix == ".jsonl":
        with contextlib.closing(jsonl_objects(path)) as objects:
            return list(next(objects, (0, {}))[1])
    with contextlib.closing(_grid(path, suffix)) as grid:
        for row_no, cells in enumerate(grid, 1):
            if not _blank(cells):
                return [name for name in _header(f"{path}: row {row_no}", cells) if name is not None]
    return []


def read_rows(path: str, *, required: Sequence[str], optional: Sequence[str], what: str) -> list[Row]:
    """Every non-blank data row, its cells as text; `what` names the format in messages."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    suffix = _suffix(path)
    rows = []
    if suffix == ".jsonl":
        for line_no, row in jsonl_objects(path):
            where = f"{path}:{line_no}"
            check_columns(list(row), required, optional, where, what)
            rows.append(Row(where, line_no, {c: _text(row.get(c), where, c) for c in (*required, *optional)}))
    else:
        names, header_row = None, 0
        with contextlib.closing(_grid(path, suffix)) as grid:
            table = list(enumerate(grid, 1))
        for row_no, cells in table:
            if _blank(cells):
                continue
            if names is None:
                names, header_row = _header(f"{path}: row {row_no}", cells), row_no
                check_columns([n for n in names if n is not None], required, optional, f"{path}: row {row_no}", what)
                continue
            where = f"{path}: row {row_no}"
            if len(cells) > len(names):
                raise DatasetError(f"{where}: {len(cells)} cells but the header has {len(names)} columns")
            values = dict.fromkeys((*required, *optional), "")
            for name, cell in zip(names, cells):
                if name is None:
                    if not _blank([cell]):
                        raise DatasetError(f"{where}: a value under a column with no name in row {header_row}")
                    continue
                values[name] = _text(cell, where, name)
            rows.append(Row(where, row_no, values))
        if names is None:
            raise DatasetError(f"{path}: empty file (a {what} file needs a header row with {list(required)})")
    if not rows:
        raise DatasetError(f"{path}: no samples")
    return rows
