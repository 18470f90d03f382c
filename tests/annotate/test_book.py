"""The click book without a server: markups files the importer reads back voxel for voxel (oblique
affine included), edits by id that merge, files changed on disk, what is refused at start-up, and
that nothing is ever written outside CLICKS_DIR."""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from pscv_dist.annotate.book import BadEdit, ClickBook, FileConflict, Point, markups_json, parse_edit
from pscv_dist.data.annotations import CaseGrid, import_annotations
from pscv_dist.data.annotations.core import ClassNames
from pscv_dist.errors import DataError, OutputError

CLASSES = ["background", "RV", "Myo", "LV"]


def oblique() -> np.ndarray:
    """A rotated, anisotropic, translated affine: voxel -> RAS mm."""
    a = np.deg2rad(17)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 3.5])
    affine[:3, 3] = [-41.5, 12.25, 80.0]
    return affine


@pytest.fixture
def grids():
    return {"p1": CaseGrid("p1", (6, 30, 40), oblique(), (3.5, 0.9, 0.7), ("/data/imagesTr/p1_0000.nii.gz",)),
            "p2": CaseGrid("p2", (4, 20, 20), None, (2.0, 1.0, 1.0), ("/data/imagesTr/p2_0000.nii.gz",)),
            "p3": CaseGrid("p3", (5, 16, 16), None, None)}


def imported(out, grids) -> dict[str, set]:
    """What `pscv prepare --clicks OUT` imports: {case: {(class, z, y, x)}}."""
    anns = import_annotations(out, None, grids, CLASSES, partial=True)
    return {case: {tuple(r) for r in a.points.tolist()} for case, a in anns.items()}


def test_written_markups_import_voxel_for_voxel(tmp_path, grids):
    book = ClickBook(tmp_path / "clicks", grids, CLASSES)
    rng = np.random.default_rng(0)
    expected = {}
    for case, grid in grids.items():
        z_n, h, w = grid.shape
        pts = [Point(f"c{c}z{z}", c, z, int(rng.integers(h)), int(rng.integers(w))) for z in range(z_n) for c in range(4)]
        book.apply(case, pts, [])
        expected[case] = {(p.cls, p.z, p.y, p.x) for p in pts}
    assert imported(tmp_path / "clicks", grids) == expected
    doc = json.loads((tmp_path / "clicks" / "p1.mrk.json").read_text())
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    labels = [p["label"] for p in markup["controlPoints"]]
    assert labels[:4] == ["background-1", "RV-1", "Myo-1", "LV-1"] and "RV-6" in labels
    # a fresh book (the server restarted) reads the same points with the same ids
    again = ClickBook(tmp_path / "clicks", grids, CLASSES)
    assert {p.id: p for p in again.points("p1")} == {p.id: p for p in book.points("p1")}
    assert not [p for p in (tmp_path / "clicks").iterdir() if p.name.startswith(".")]  # no temp file left


def test_edits_by_id_merge(tmp_path, grids):
    book = ClickBook(tmp_path / "c", grids, CLASSES)
    # two "tabs", each unaware of the other's points
    book.apply("p2", [Point("c1z0", 1, 0, 3, 3)], [])
    book.apply("p2", [Point("c2z0", 2, 0, 5, 5)], [])
    assert {p.id for p in book.points("p2")} == {"c1z0", "c2z0"}
    # the same point from both: the last write wins, nothing else changes
    book.apply("p2", [Point("c1z0", 1, 0, 7, 7)], [])
    rev, pts, counts = book.apply("p2", [], ["c2z0", "gone"])
    assert [(p.id, p.y, p.x) for p in pts] == [("c1z0", 7, 7)] and counts["missing"] == ["gone"]
    # an edit that changes nothing does not rewrite the file
    stamp = os.stat(book.file("p2")).st_mtime_ns
    rev2, _, _ = book.apply("p2", [Point("c1z0", 1, 0, 7, 7)], [])
    assert rev2 == rev and os.stat(book.file("p2")).st_mtime_ns == stamp


def test_concurrent_edits_of_one_case_lose_nothing(tmp_path, grids):
    book = ClickBook(tmp_path / "c", grids, CLASSES)

    def tab(t: int):
        for i in range(25):
            book.apply("p1", [Point(f"t{t}-{i}", 1 + t % 3, i % 6, t, i)], [])

    threads = [threading.Thread(target=tab, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(book.points("p1")) == 200
    assert len(imported(tmp_path / "c", grids)["p1"]) == 200


def test_a_file_changed_on_disk_is_merged_not_overwritten(tmp_path, grids):
    out = tmp_path / "c"
    book = ClickBook(out, grids, CLASSES)
    book.apply("p2", [Point("c1z0", 1, 0, 1, 1)], [])
    # another program (3D Slicer, a second server) adds a point to the file
    other = ClickBook(out, grids, CLASSES)
    other.apply("p2", [Point("slicer-7", 3, 2, 4, 4)], [])
    rev, pts, _ = book.apply("p2", [Point("c2z1", 2, 1, 2, 2)], [])
    assert {p.id for p in pts} == {"c1z0", "slicer-7", "c2z1"}
    # a file that became unreadable is a conflict: refused, left as it is
    book.file("p2").write_text("{not json")
    with pytest.raises(FileConflict, match="not valid JSON"):
        book.apply("p2", [Point("c1z1", 1, 1, 2, 2)], [])
    assert book.file("p2").read_text() == "{not json"


def test_ids_read_from_files(tmp_path, grids):
    """Slicer's own ids are kept; missing, duplicate and wrong-slot ids are renamed p<n>."""
    out = tmp_path / "c"
    out.mkdir()
    names = ClassNames(CLASSES)
    pts = [Point("a", 1, 0, 1, 1), Point("b", 2, 0, 2, 2), Point("c1z3", 1, 2, 3, 3), Point("x", 3, 1, 4, 4)]
    doc = json.loads(markups_json("p2", grids["p2"], names, pts))
    cps = doc["markups"][0]["controlPoints"]
    cps[1]["id"] = "a"  # duplicate
    cps[3]["id"] = "bad id!"  # invalid characters
    del cps[0]["id"]  # missing
    (out / "p2.mrk.json").write_text(json.dumps(doc))
    book = ClickBook(out, grids, CLASSES)
    got = {(p.cls, p.z, p.y, p.x): p.id for p in book.points("p2")}
    assert set(got) == {(p.cls, p.z, p.y, p.x) for p in pts}
    assert len(set(got.values())) == 4 and got[(2, 0, 2, 2)] == "a"
    assert got[(1, 2, 3, 3)].startswith("p")  # "c1z3" is the slot of slice 3, the point is on slice 2


def test_files_named_by_image_stem_are_edited_in_place(tmp_path, grids):
    out = tmp_path / "c"
    ClickBook(out, grids, CLASSES).apply("p1", [Point("c1z0", 1, 0, 1, 1)], [])
    os.rename(out / "p1.mrk.json", out / "p1_0000.mrk.json")  # the image file's name, as the importer allows
    book = ClickBook(out, grids, CLASSES)
    book.apply("p1", [Point("c2z0", 2, 0, 2, 2)], [])
    assert sorted(p.name for p in out.iterdir()) == ["p1_0000.mrk.json"]
    assert len(imported(out, grids)["p1"]) == 2


@pytest.mark.parametrize("name, content, message", [
    ("nobody.mrk.json", '{"markups": []}', "annotation for case 'nobody'"),
    ("p2.mrk.json", "{oops", "not valid JSON"),
    ("p2.mrk.json", json.dumps({"markups": [{"type": "Line", "controlPoints": []}]}), "only point lists"),
    ("p2.mrk.json", json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "Liver", "position": [0, 0, 0]}]}]}), "names no class"),
    ("p2.mrk.json", json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "RV", "position": [-500, 0, 0]}]}]}), "outside the volume"),
    ("p2.nii.gz", "", "holds NIfTI maps"),
])
def test_bad_files_in_clicks_dir_are_refused_at_start(tmp_path, grids, name, content, message):
    out = tmp_path / "c"
    out.mkdir()
    (out / name).write_text(content)
    with pytest.raises(DataError, match=message):
        ClickBook(out, grids, CLASSES)
    assert (out / name).read_text() == content


def test_two_files_for_one_case_are_refused(tmp_path, grids):
    out = tmp_path / "c"
    out.mkdir()
    for name in ("p1.mrk.json", "p1_0000.mrk.json"):
        (out / name).write_text('{"markups": []}')
    with pytest.raises(DataError, match="a second markups file for case 'p1'"):
        ClickBook(out, grids, CLASSES)


def test_out_must_be_a_writable_folder(tmp_path, grids):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="found a file"):
        ClickBook(tmp_path / "f", grids, CLASSES)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(OutputError, match="not writable"):
            ClickBook(ro / "clicks", grids, CLASSES)
    finally:
        ro.chmod(0o700)


def test_never_writes_through_a_link(tmp_path, grids):
    """A markups file that is a link to a file elsewhere is replaced by a file in CLICKS_DIR; the
    link's target is never written."""
    outside = tmp_path / "elsewhere.mrk.json"
    out = tmp_path / "c"
    ClickBook(tmp_path / "seed", grids, CLASSES).apply("p2", [Point("c1z0", 1, 0, 1, 1)], [])
    outside.write_bytes((tmp_path / "seed" / "p2.mrk.json").read_bytes())
    before = outside.read_bytes()
    out.mkdir()
    (out / "p2.mrk.json").symlink_to(outside)
    book = ClickBook(out, grids, CLASSES)
    assert [p.id for p in book.points("p2")] == ["c1z0"]
    book.apply("p2", [Point("c2z0", 2, 0, 2, 2)], [])
    assert outside.read_bytes() == before
    assert not (out / "p2.mrk.json").is_symlink() and len(book.points("p2")) == 2


@pytest.mark.parametrize("body, message", [
    ([], "expected an object"),
    ({"sett": []}, "unknown key(s) ['sett']"),
    ({"set": {}}, "body.set: expected a list"),
    ({"set": [{"id": "a", "class": 1, "z": 0, "y": 0}]}, "missing key(s) ['x']"),
    ({"set": [{"id": "a", "class": 1, "z": 0, "y": 0, "x": 0, "colour": 1}]}, "unknown key(s) ['colour']"),
    ({"set": [{"id": "a", "class": 9, "z": 0, "y": 0, "x": 0}]}, "unknown class 9"),
    ({"set": [{"id": "a", "class": "Liver", "z": 0, "y": 0, "x": 0}]}, "unknown class 'Liver'"),
    ({"set": [{"id": "a", "class": True, "z": 0, "y": 0, "x": 0}]}, "expected an integer"),
    ({"set": [{"id": "a", "class": 1, "z": 0, "y": 1.5, "x": 0}]}, "expected an integer voxel index"),
    ({"set": [{"id": "a", "class": 1, "z": 4, "y": 0, "x": 0}]}, "z = 4 is outside the image"),
    ({"set": [{"id": "a", "class": 1, "z": 0, "y": -1, "x": 0}]}, "y = -1 is outside the image"),
    ({"set": [{"id": "a", "class": 1, "z": 0, "y": 0, "x": 20}]}, "x = 20 is outside the image"),
    ({"set": [{"id": "../x", "class": 1, "z": 0, "y": 0, "x": 0}]}, "expected a point id"),
    ({"set": [{"id": "c2z0", "class": 1, "z": 0, "y": 0, "x": 0}]}, "use id 'c1z0'"),
    ({"set": [{"id": "a", "class": 1, "z": 0, "y": 0, "x": 0}], "delete": ["a"]}, "appears twice"),
    ({"delete": [3]}, "delete[0]: expected a point id"),
])
def test_malformed_edits_are_refused(grids, body, message):
    with pytest.raises(BadEdit) as err:
        parse_edit(body, grids["p2"], ClassNames(CLASSES))
    assert message in str(err.value)


def test_class_by_name(grids):
    (p,), _ = parse_edit({"set": [{"id": "q", "class": "myo", "z": 1, "y": 2, "x": 3}]}, grids["p2"], ClassNames(CLASSES))
    assert p == Point("q", 2, 1, 2, 3)
