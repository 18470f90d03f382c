"""3D Slicer markups files (``<case>.mrk.json``): point lists read as clicks, and written back.

Only point lists (``"type": "Fiducial"``) are clicks; lines, curves, planes, angles and ROIs are
refused by name. Positions are millimetres (``coordinateUnits`` ``mm``, or ``um``, scaled) in
``coordinateSystem`` LPS (Slicer's default, also when the key is absent) or RAS. A control point
whose ``positionStatus`` is not ``defined`` (a point still to be placed) has no position: skipped,
and counted in the source record as ``undefined_points``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..volume_io import check_file
from .core import Annotation, CaseGrid, ClassNames, Lazy, finalize, lps_to_ras, sha256_file, voxel_to_world, world_to_voxel

SUFFIX = ".mrk.json"
SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
          "Schema/markups-schema-v1.0.3.json#")
COORDINATE_SYSTEMS = ("LPS", "RAS")
_UNITS = {"mm": 1.0, "um": 1e-3}
_POINTS = "\u0000controlPoints\u0000"  # placeholder while the rest is indented


def case_name(path: Path) -> str:
    return path.name[: -len(SUFFIX)]


def _load(path: Path) -> list:
    check_file(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text (UTF-8) file; expected 3D Slicer markups JSON") from None
    markups = raw.get("markups") if isinstance(raw, dict) else None
    if not isinstance(markups, list) or not all(isinstance(m, dict) for m in markups):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{path}: expected 3D Slicer markups JSON with a 'markups' list of objects, found {found}")
    return markups


def _units(path: Path, where: str, units) -> float:
    name = units[0] if isinstance(units, list) and units else units
    if name not in _UNITS:
        raise DataError(f"{path}: {where} has coordinateUnits {units!r}; expected 'mm' (or 'um')")
    return _UNITS[name]


def _position_error(desc: str, point: dict) -> DataError | None:
    position = point.get("position")
    if (not isinstance(position, list) or len(position) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in position)):
        return DataError(f"{desc}: expected a position of 3 finite numbers, found {position!r}")
    return None


def read_markups(path: Path, case: str, grid: CaseGrid, names: ClassNames) -> Annotation:
    """The defined control points of every point list in ``path``, as voxels of ``grid``."""
    classes, ras, tags, undefined = [], [], [], 0  # tags: (id, label), formatted only for an error
    known: dict[str, int | None] = {}

    def describe(i: int) -> str:
        return f"{path}: control point id {tags[i][0]!r} (label {tags[i][1]!r})"

    for m_index, markup in enumerate(_load(path), 1):
        title = f"markup {m_index}" + (f" ({markup['name']!r})" if markup.get("name") else "")
        kind = markup.get("type")
        if kind != "Fiducial":
            raise DataError(f"{path}: {title} is of type {kind!r}; only point lists (type 'Fiducial') are "
                            f"clicks (lines, curves, planes, angles and ROIs are not read)")
        system = markup.get("coordinateSystem", "LPS")
        if system not in COORDINATE_SYSTEMS:
            raise DataError(f"{path}: {title} has coordinateSystem {system!r}; expected 'LPS' or 'RAS'")
        scale = _units(path, title, markup.get("coordinateUnits", "mm"))
        points = markup.get("controlPoints") or []
        if not isinstance(points, list):
            raise DataError(f"{path}: {title}: expected 'controlPoints' to be a list, found {type(points).__name__}")
        defined = []
        for p_index, point in enumerate(points, 1):
            if not isinstance(point, dict):
                raise DataError(f"{path}: {title}: control point {p_index} is not an object")
            if point.get("positionStatus", "defined") != "defined":
                undefined += 1
                continue
            label = str(point.get("label", ""))
            if label not in known:
                known[label] = names.label(label)
            tags.append((str(point.get("id", p_index)), label))
            if known[label] is None:
                raise DataError(f"{describe(len(tags) - 1)}: the label names no class of the dataset (expected "
                                f"'<class>' or '<class>-<number>'); {names.known()}")
            classes.append(known[label])
            defined.append(point)
        if not defined:
            continue
        first = len(tags) - len(defined)
        try:
            xyz = np.array([p.get("position") for p in defined], dtype=np.float64).reshape(len(defined), -1)
        except (TypeError, ValueError):
            xyz = None
        if xyz is None or xyz.shape[1:] != (3,) or not np.isfinite(xyz).all():
            for i, point in enumerate(defined):  # the slow path names the first bad point
                if (error := _position_error(describe(first + i), point)) is not None:
                    raise error
        xyz = xyz.reshape(-1, 3) * scale
        ras.append(xyz if system == "RAS" else lps_to_ras(xyz))
    ijk = world_to_voxel(grid, np.concatenate(ras) if ras else np.zeros((0, 3)), str(path))
    source = {"format": "slicer", "file": str(path), "sha256": sha256_file(path)}
    if undefined:
        source["undefined_points"] = undefined
    return finalize(case, grid, np.asarray(classes), ijk[:, ::-1], source, Lazy(describe))


_POINT = ('        {{"id": "{n}", "label": {label}-{count}", "description": "", "associatedNodeID": "", '
          '"position": [{x!r}, {y!r}, {z!r}], "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0], '
          '"selected": true, "locked": false, "visibility": true, "positionStatus": "defined"}}')


def markups_json(annotation: Annotation, grid: CaseGrid, names: ClassNames) -> bytes:
    """One LPS point list per case; labels ``<class>-<n>`` numbered per class from 1."""
    lps = (lps_to_ras(voxel_to_world(grid, annotation.points)) + 0.0).tolist()  # + 0.0: no "-0.0"
    quoted = [json.dumps(c)[:-1] for c in names.classes]  # '"RV': the label's opening, JSON-escaped
    counters = [0] * len(names)
    lines = []
    for n, (c, (x, y, z)) in enumerate(zip(annotation.points[:, 0].tolist(), lps), 1):
        counters[c] += 1  # floats print as json does (float.__repr__: shortest exact round trip)
        lines.append(_POINT.format(n=n, label=quoted[c], count=counters[c], x=x, y=y, z=z))
    doc = {"@schema": SCHEMA, "markups": [{
        "type": "Fiducial", "name": annotation.case, "coordinateSystem": "LPS", "coordinateUnits": "mm",
        "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(lines), "controlPoints": _POINTS, "measurements": []}]}
    # indented like Slicer's own files, one control point a line
    listing = "[\n" + ",\n".join(lines) + "\n      ]" if lines else "[]"
    return (json.dumps(doc, indent=2).replace(json.dumps(_POINTS), listing, 1) + "\n").encode()
