"""One CSV file of clicks for all cases.

Header ``case,class,i,j,k`` (NIfTI voxel indices, integers) or ``case,class,x,y,z,space`` (world
millimetres; ``space`` is ``RAS`` or ``LPS``, per row). Column names are matched case-insensitively
and extra columns are ignored; ``class`` is a class name or its integer index; blank lines are
skipped. Errors name the file and the line.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..volume_io import check_file
from .core import Annotation, CaseGrid, CaseNames, ClassNames, Lazy, finalize, lps_to_ras, sha256_file, world_to_voxel

VOXEL_COLUMNS = ("case", "class", "i", "j", "k")
WORLD_COLUMNS = ("case", "class", "x", "y", "z", "space")


def _columns(path: Path, header: list[str]) -> tuple[str, dict[str, int]]:
    found = [h.strip().lower() for h in header]
    index = {name: found.index(name) for name in set(VOXEL_COLUMNS + WORLD_COLUMNS) if name in found}
    has_voxel, has_world = set(VOXEL_COLUMNS) <= set(index), set(WORLD_COLUMNS) <= set(index)
    if has_voxel and has_world:
        raise DataError(f"{path}: header has both voxel (i, j, k) and world (x, y, z, space) columns; "
                        f"expected one of 'case,class,i,j,k' or 'case,class,x,y,z,space', found {header}")
    if not (has_voxel or has_world):
        missing = min(([c for c in cols if c not in index] for cols in (VOXEL_COLUMNS, WORLD_COLUMNS)), key=len)
        raise DataError(f"{path}: missing column(s) {missing}; expected the header 'case,class,i,j,k' (voxel "
                        f"indices) or 'case,class,x,y,z,space' (world mm), found {header}")
    return ("voxel" if has_voxel else "world"), index


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)  # "12.0" from a spreadsheet is fine; "12.5" is not a voxel
        if not value.is_integer():
            raise
        return int(value)


def read_csv(path: Path, grids: dict[str, CaseGrid], cases: CaseNames, names: ClassNames) -> dict[str, Annotation]:
    check_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text (UTF-8) file; expected a CSV of clicks") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty file; expected the header 'case,class,i,j,k' or 'case,class,x,y,z,space'")
    mode, col = _columns(path, header)
    rows: dict[str, tuple[list, list, list]] = {}  # case -> classes, coordinates, line numbers
    case_of: dict[str, str] = {}
    class_of: dict[str, int | None] = {}
    def at() -> str:  # the current line, formatted only for an error
        return f"{path}: line {reader.line_num}"

    for row in reader:
        if not any(v.strip() for v in row):
            continue
        if len(row) < len(header):
            raise DataError(f"{at()}: expected {len(header)} values ({','.join(header)}), found {len(row)}")
        name = row[col["case"]].strip()
        if name not in case_of:
            case_of[name] = cases.resolve(name, at())
        case = case_of[name]
        if row[col["class"]] not in class_of:
            class_of[row[col["class"]]] = names.name_or_index(row[col["class"]])
        index = class_of[row[col["class"]]]
        if index is None:
            raise DataError(f"{at()}: class {row[col['class']].strip()!r} is not a class name or index of the "
                            f"dataset; {names.known()}")
        try:
            if mode == "voxel":
                coords = [_integer(row[col[a]]) for a in "ijk"]
            else:
                coords = [float(row[col[a]]) for a in "xyz"]
                if not all(math.isfinite(v) for v in coords):
                    raise ValueError
        except ValueError:
            axes = "ijk" if mode == "voxel" else "xyz"
            found = [row[col[a]].strip() for a in axes]
            kind = "integer voxel indices" if mode == "voxel" else "finite numbers (mm)"
            raise DataError(f"{at()}: expected {kind} for {', '.join(axes)}, found {found}") from None
        if mode == "world":
            space = row[col["space"]].strip().upper()
            if space not in ("RAS", "LPS"):
                raise DataError(f"{at()}: space {row[col['space']].strip()!r}; expected 'RAS' or 'LPS'")
            coords = coords if space == "RAS" else list(lps_to_ras(np.asarray(coords))[0])
        classes, coordinates, lines = rows.setdefault(case, ([], [], []))
        classes.append(index)
        coordinates.append(coords)
        lines.append(reader.line_num)
    digest = sha256_file(path)
    out = {}
    for case, (classes, coordinates, lines) in rows.items():
        grid = grids[case]
        if mode == "voxel":
            ijk = np.asarray(coordinates, dtype=np.int64)
        else:
            ijk = world_to_voxel(grid, np.asarray(coordinates), str(path))
        source = {"format": "csv", "file": str(path), "sha256": digest, "columns": mode}
        where = Lazy(lambda i, lines=lines: f"{path}: line {lines[i]}")
        out[case] = finalize(case, grid, np.asarray(classes), ijk[:, ::-1], source, where)
    return out


def clicks_csv(annotations: dict[str, Annotation], names: ClassNames) -> bytes:
    """``case,class,i,j,k`` with class names, cases in the given order, points in store order."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VOXEL_COLUMNS)
    for case, annotation in annotations.items():
        for c, z, y, x in annotation.points.tolist():
            writer.writerow([case, names.classes[c], x, y, z])
    return buffer.getvalue().encode()
