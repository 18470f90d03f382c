"""The clicks of every case, kept as 3D Slicer markups ``CLICKS_DIR/<case>.mrk.json``.

Every point has an **id** and is edited on its own: an edit sets (creates or moves) points by id
and deletes points by id, and touches nothing else. Edits of one case are applied one at a time
under the case's lock, each on the newest state (the one in memory, or the file when something
else changed it since: 3D Slicer, another server), and the file is rewritten atomically after
every change. So two browser tabs editing one case never lose each other's points: for one point
the last write wins, every other point is kept.

Ids: letters, digits and ``_ . : -`` (1-64 characters, starting with a letter or digit). The page
names a point by its *slot*, ``c<class>z<slice>`` (:func:`slot_id`), so one class has one point per
slice and clicking again moves it, in every tab. A slot id must agree with the point's class and
slice (refused otherwise). Points read from a file keep the file's control point ``id`` where it is
a valid, unused id (and, for a slot id, the right slot); the others are named ``p<n>``.

The file is what ``pscv prepare --clicks CLICKS_DIR`` imports and what Slicer opens: one point list
(type Fiducial) per case, LPS millimetres through the image affine
(:meth:`~pscv_dist.data.annotations.CaseGrid.world_affine`), control point labels ``<class>-<n>``
and ids as above. A file is read with the importer's own checks first
(:func:`~pscv_dist.data.annotations.slicer.read_markups`), so the server refuses at start-up
exactly what ``pscv prepare`` would refuse.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from pathlib import Path

import numpy as np

from ..data.annotations import Annotation, CaseGrid
from ..data.annotations import csvio, slicer
from ..data.annotations.core import CaseNames, ClassNames, lps_to_ras, voxel_to_world, world_to_voxel
from ..errors import DataError, OutputError
from ..files import write_atomic

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
SLOT = re.compile(r"c(\d+)z(\d+)")
_UNITS = {"mm": 1.0, "um": 1e-3}  # what the importer accepts (slicer._units)
_ORIENTATION = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]  # Slicer's default for an LPS list


def slot_id(cls: int, z: int) -> str:
    """The id the page gives the point of class ``cls`` on slice ``z``."""
    return f"c{cls}z{z}"


@dataclasses.dataclass(frozen=True)
class Point:
    id: str
    cls: int  # class index
    z: int  # store order (Z, H, W): slice, row, column = NIfTI (k, j, i)
    y: int
    x: int

    def as_json(self, classes: list[str]) -> dict:
        return {"id": self.id, "class": self.cls, "class_name": classes[self.cls], "z": self.z, "y": self.y, "x": self.x}


class BadEdit(ValueError):
    """An edit the server refuses (HTTP 400); the message says which item and why."""


class FileConflict(DataError):
    """A case's markups file changed on disk into something that cannot be read (HTTP 409)."""


# --- the request body ---------------------------------------------------------------------------
def _integer(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadEdit(f"{where}: expected an integer voxel index, found {json.dumps(value)[:40]}")
    return value


def parse_point(item, where: str, grid: CaseGrid, names: ClassNames, point_id: str | None = None) -> Point:
    """One point of a request body: ``{"id", "class", "z", "y", "x"}`` (``id`` from the URL when given
    there). ``class``: the index or the class name. Everything outside the image is refused."""
    if not isinstance(item, dict):
        raise BadEdit(f"{where}: expected an object {{\"id\", \"class\", \"z\", \"y\", \"x\"}}, found "
                      f"{type(item).__name__}")
    expected = {"class", "z", "y", "x"} | ({"id"} if point_id is None else set())
    missing = sorted(expected - set(item))
    unknown = sorted(set(item) - expected - {"id", "class_name"})
    if missing or unknown:
        raise BadEdit(f"{where}: " + "; ".join(
            ([f"missing key(s) {missing}"] if missing else []) + ([f"unknown key(s) {unknown}"] if unknown else []))
            + "; expected the keys id, class, z, y, x")
    pid = point_id if point_id is not None else item["id"]
    if point_id is not None and "id" in item and item["id"] != point_id:
        raise BadEdit(f"{where}: id {item['id']!r} differs from the id in the URL {point_id!r}")
    check_id(pid, f"{where}.id")
    cls = item["class"]
    if isinstance(cls, str):
        index = names.name(cls)
        if index is None:
            raise BadEdit(f"{where}.class: unknown class {cls!r}; {names.known()}")
    else:
        index = _integer(cls, f"{where}.class")
        if not 0 <= index < len(names):
            raise BadEdit(f"{where}.class: unknown class {index}; {names.known()}")
    z, y, x = (_integer(item[a], f"{where}.{a}") for a in "zyx")
    size = grid.shape
    for axis, value, n in zip("zyx", (z, y, x), size):
        if not 0 <= value < n:
            raise BadEdit(f"{where}: {axis} = {value} is outside the image (z, y, x) of {size[0]} x {size[1]} x "
                          f"{size[2]} voxels: {axis} must be in 0..{n - 1}")
    slot = SLOT.fullmatch(pid)
    if slot and (int(slot.group(1)), int(slot.group(2))) != (index, z):
        raise BadEdit(f"{where}: id {pid!r} is the slot of class {slot.group(1)} on slice {slot.group(2)}, but the "
                      f"point is class {index} on slice {z}; use id {slot_id(index, z)!r} (or a non-slot id)")
    return Point(pid, index, z, y, x)


def check_id(pid, where: str) -> str:
    if not isinstance(pid, str) or not ID.fullmatch(pid):
        raise BadEdit(f"{where}: expected a point id of 1-64 letters, digits, '_', '.', ':' or '-' (starting "
                      f"with a letter or digit), found {json.dumps(pid)[:80]}")
    return pid


def parse_edit(body, grid: CaseGrid, names: ClassNames) -> tuple[list[Point], list[str]]:
    """``{"set": [point, ...], "delete": [id, ...]}`` -> (points to set, ids to delete); all checked."""
    if not isinstance(body, dict):
        raise BadEdit(f"body: expected an object {{\"set\": [...], \"delete\": [...]}}, found {type(body).__name__}")
    unknown = sorted(set(body) - {"set", "delete"})
    if unknown:
        raise BadEdit(f"body: unknown key(s) {unknown}; expected 'set' and/or 'delete'")
    sets, deletes = body.get("set", []), body.get("delete", [])
    for key, value in (("set", sets), ("delete", deletes)):
        if not isinstance(value, list):
            raise BadEdit(f"body.{key}: expected a list, found {type(value).__name__}")
    if len(sets) + len(deletes) > 10_000:
        raise BadEdit(f"body: {len(sets) + len(deletes)} edits in one request; at most 10000")
    points = [parse_point(item, f"set[{i}]", grid, names) for i, item in enumerate(sets)]
    ids = [check_id(pid, f"delete[{i}]") for i, pid in enumerate(deletes)]
    seen: dict[str, str] = {}
    for where, pid in [(f"set[{i}]", p.id) for i, p in enumerate(points)] + [(f"delete[{i}]", d) for i, d in enumerate(ids)]:
        if pid in seen:
            raise BadEdit(f"{where}: id {pid!r} appears twice in one request (first in {seen[pid]})")
        seen[pid] = where
    return points, ids


# --- markups files ------------------------------------------------------------------------------
def _scale(units) -> float:
    return _UNITS[units[0] if isinstance(units, list) and units else units]


def read_points(path: Path, case: str, grid: CaseGrid, names: ClassNames) -> list[Point]:
    """The defined control points of ``path`` with their ids, as voxels of ``grid``.

    The importer reads the file first (its errors name the file and the point), so what is read
    here is what ``pscv prepare --clicks`` would import."""
    slicer.read_markups(path, case, grid, names)
    raw = json.loads(path.read_text(encoding="utf-8-sig"))
    ids, classes, ras = [], [], []
    for markup in raw["markups"]:
        system, scale = markup.get("coordinateSystem", "LPS"), _scale(markup.get("coordinateUnits", "mm"))
        for point in markup.get("controlPoints") or []:
            if point.get("positionStatus", "defined") != "defined":
                continue
            xyz = np.asarray(point["position"], dtype=np.float64) * scale
            ras.append(xyz if system == "RAS" else lps_to_ras(xyz)[0])
            classes.append(names.label(str(point.get("label", ""))))
            ids.append(point.get("id"))
    ijk = world_to_voxel(grid, np.asarray(ras).reshape(-1, 3), str(path))
    points, used, pending = [], set(), []
    for pid, cls, (i, j, k) in zip(ids, classes, ijk.tolist()):
        slot = SLOT.fullmatch(pid) if isinstance(pid, str) else None
        good = (isinstance(pid, str) and ID.fullmatch(pid) and pid not in used
                and (slot is None or (int(slot.group(1)), int(slot.group(2))) == (cls, k)))
        if good:
            used.add(pid)
            points.append(Point(pid, int(cls), int(k), int(j), int(i)))
        else:
            pending.append((int(cls), int(k), int(j), int(i)))
    n = 0
    for cls, z, y, x in pending:  # ids for points whose file id is missing, taken or a wrong slot
        n += 1
        while f"p{n}" in used:
            n += 1
        used.add(f"p{n}")
        points.append(Point(f"p{n}", cls, z, y, x))
    return points


def markups_json(case: str, grid: CaseGrid, names: ClassNames, points: list[Point]) -> bytes:
    """One LPS point list: ids kept, labels ``<class>-<n>`` numbered per class, sorted by slice."""
    ordered = sorted(points, key=lambda p: (p.z, p.cls, p.y, p.x, p.id))
    zyx = np.array([[p.cls, p.z, p.y, p.x] for p in ordered], dtype=np.int64).reshape(-1, 4)
    lps = (lps_to_ras(voxel_to_world(grid, zyx)) + 0.0).tolist()  # + 0.0: no "-0.0"
    counters = [0] * len(names)
    control = []
    for p, position in zip(ordered, lps):
        counters[p.cls] += 1
        control.append({"id": p.id, "label": f"{names.classes[p.cls]}-{counters[p.cls]}", "description": "",
                        "associatedNodeID": "", "position": position, "orientation": _ORIENTATION,
                        "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"})
    placeholder = "\u0000controlPoints\u0000"  # replaced by one control point a line, as Slicer indents
    doc = {"@schema": slicer.SCHEMA, "markups": [{
        "type": "Fiducial", "name": case, "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
        "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(control),
        "controlPoints": placeholder, "measurements": []}]}
    listing = ("[\n" + ",\n".join("        " + json.dumps(c) for c in control) + "\n      ]") if control else "[]"
    return (json.dumps(doc, indent=2).replace(json.dumps(placeholder), listing, 1) + "\n").encode()


def _stamp(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclasses.dataclass
class _Case:
    grid: CaseGrid
    path: Path
    points: dict[str, Point]
    stamp: tuple | None  # the file as last read or written (inode, mtime, size); None: no file
    revision: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class ClickBook:
    """Every case's points, in memory and in ``out``; per-case locks; atomic rewrites."""

    def __init__(self, out: str | os.PathLike, grids: dict[str, CaseGrid], classes: list[str]):
        self.out = Path(out)
        self.grids = grids
        self.classes = list(classes)
        self.names = ClassNames(classes)
        self._prepare_folder()
        paths = self._existing_files()
        self._cases: dict[str, _Case] = {}
        for case, grid in grids.items():
            if Path(case).name != case or case in (".", "..") or "\\" in case or "\x00" in case:
                raise DataError(f"case {case!r}: the name cannot be a file name in {self.out}")
            path = paths.get(case, self.out / f"{case}{slicer.SUFFIX}")
            stamp = _stamp(path)
            points = read_points(path, case, grid, self.names) if stamp is not None else []
            self._cases[case] = _Case(grid, path, {p.id: p for p in points}, stamp)

    def _prepare_folder(self) -> None:
        from ..eval.paths import check_writable_dir

        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out}: --out must be a folder for the markups files, found a file")
        check_writable_dir(self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def _existing_files(self) -> dict[str, Path]:
        names = CaseNames(self.grids)
        found: dict[str, Path] = {}
        for path in sorted(p for p in self.out.iterdir() if not p.name.startswith(".")):
            lower = path.name.lower()
            if lower.endswith((".nii", ".nii.gz")):
                raise DataError(f"{path}: {self.out} holds NIfTI maps; pscv annotate writes Slicer markups and "
                                f"pscv prepare reads one format per folder; choose another --out")
            if not lower.endswith(slicer.SUFFIX):
                continue
            case = names.resolve(slicer.case_name(path), str(path))
            if case in found:
                raise DataError(f"{path}: a second markups file for case {case!r} (the first is {found[case]}); "
                                f"keep one")
            found[case] = path
        return found

    # --- reading --------------------------------------------------------------------------------
    def _refresh(self, case: str, entry: _Case) -> None:
        """Reload the file if it changed on disk since it was last read or written (lock held)."""
        stamp = _stamp(entry.path)
        if stamp == entry.stamp:
            return
        try:
            points = read_points(entry.path, case, entry.grid, self.names) if stamp is not None else []
        except DataError as exc:
            raise FileConflict(f"{exc} (the file changed on disk while the page was open; fix or remove it, "
                               f"then edit again)") from None
        entry.points = {p.id: p for p in points}
        entry.stamp = stamp
        entry.revision += 1

    def _entry(self, case: str) -> _Case:
        return self._cases[case]

    def snapshot(self, case: str) -> tuple[int, list[Point]]:
        """(revision, points) of a case, sorted by slice, class and id."""
        entry = self._entry(case)
        with entry.lock:
            self._refresh(case, entry)
            return entry.revision, _sorted(entry.points.values())

    def points(self, case: str) -> list[Point]:
        return self.snapshot(case)[1]

    def file(self, case: str) -> Path:
        return self._entry(case).path

    # --- writing --------------------------------------------------------------------------------
    def apply(self, case: str, sets: list[Point], deletes: list[str]) -> tuple[int, list[Point], dict]:
        """Set and delete points by id on the newest state, then rewrite the file if anything changed.
        Returns (revision, points, {"set": n, "deleted": n, "missing": [ids not there to delete]})."""
        entry = self._entry(case)
        with entry.lock:
            self._refresh(case, entry)
            points = dict(entry.points)
            missing = [pid for pid in deletes if pid not in points]
            for pid in deletes:
                points.pop(pid, None)
            for p in sets:
                points[p.id] = p
            counts = {"set": len(sets), "deleted": len(deletes) - len(missing), "missing": missing}
            if points == entry.points:
                return entry.revision, _sorted(points.values()), counts
            data = markups_json(case, entry.grid, self.names, list(points.values()))
            write_atomic(entry.path, data)
            entry.points, entry.stamp = points, _stamp(entry.path)
            entry.revision += 1
            return entry.revision, _sorted(points.values()), counts

    # --- export ---------------------------------------------------------------------------------
    def annotations(self) -> dict[str, Annotation]:
        """Every case with points, as the annotations package's records (unique, sorted rows)."""
        out = {}
        for case in self.grids:
            pts = self.points(case)
            if pts:
                rows = np.unique(np.array([[p.cls, p.z, p.y, p.x] for p in pts], dtype=np.int32), axis=0)
                out[case] = Annotation(case, rows, {"format": "slicer", "file": str(self.file(case))}, 0)
        return out

    def export_csv(self) -> bytes:
        """``case,class,i,j,k`` (class names, NIfTI voxel indices): what ``--clicks clicks.csv`` imports."""
        return csvio.clicks_csv(self.annotations(), self.names)


def _sorted(points) -> list[Point]:
    return sorted(points, key=lambda p: (p.z, p.cls, p.id))
