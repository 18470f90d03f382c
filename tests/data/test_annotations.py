"""Annotation files (issue 11): 3D Slicer markups, sparse NIfTI maps, CSV and HDF5 keys, read into
store-order points (class, z, y, x) and written back out.

Expected voxels are computed independently of the module: world positions with nibabel's
``apply_affine`` from chosen voxels plus sub-voxel offsets, label counts with ``np.unique`` on the
raw files."""
from __future__ import annotations

import hashlib
import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from pscv_dist.data.annotations import (FORMATS, Annotation, CaseGrid, detect_format, export_annotations,
                                        import_annotations)
from pscv_dist.data.volume_io import nifti_geometry
from pscv_dist.errors import DataError

PROSTATE_CLASSES = ["background", "PZ", "TZ"]  # the MSD prostate labels of the scribble file
ACDC_CLASSES = ["background", "RV", "Myo", "LV"]
ACDC_SAMPLE = ["patient001_frame01", "patient017_frame01", "patient042_frame16", "patient080_frame01"]
# A small oblique grid (rotated and sheared axes, anisotropic) for the fast synthetic tests.
OBLIQUE = np.array([[-0.7, 0.1, 0.2, 30.0], [0.05, -0.8, 0.6, -12.0], [0.1, 0.3, 2.5, 7.0], [0, 0, 0, 1]])
SHAPE = (6, 20, 24)  # (Z, H, W): k < 6, j < 20, i < 24


def grid(case="c1", affine=OBLIQUE, shape=SHAPE, spacing=None) -> CaseGrid:
    return CaseGrid(case, shape, affine, spacing, (f"/src/{case}_0000.nii.gz",))


def to_frame(ras: np.ndarray, system: str) -> np.ndarray:
    return ras if system == "RAS" else ras * np.array([-1.0, -1.0, 1.0])


def store_rows(classes, ijk) -> np.ndarray:
    """Independent expectation: (class, k, j, i) rows, unique and sorted."""
    ijk = np.asarray(ijk).reshape(-1, 3)
    return np.unique(np.column_stack([classes, ijk[:, 2], ijk[:, 1], ijk[:, 0]]), axis=0)


def write_markups(path, labels, positions, system="LPS", kind="Fiducial", **markup):
    path.parent.mkdir(parents=True, exist_ok=True)
    points = [{"id": str(n), "label": label, "position": [float(v) for v in pos], "positionStatus": "defined"}
              for n, (label, pos) in enumerate(zip(labels, positions), 1)]
    doc = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                      "Resources/Schema/markups-schema-v1.0.3.json#",
           "markups": [{"type": kind, "coordinateSystem": system, "coordinateUnits": "mm",
                        "controlPoints": points, **markup}]}
    path.write_text(json.dumps(doc))
    return path


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(v) for v in row) for row in rows]) + "\n")
    return path


def known_voxels(g: CaseGrid, n=40, seed=0):
    """Voxels (i, j, k) across the volume (corners included), classes, and sub-voxel offsets < 0.5."""
    rng = np.random.default_rng(seed)
    Z, H, W = g.shape
    ijk = np.column_stack([rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, Z, n)])
    ijk = np.vstack([ijk, [[0, 0, 0], [W - 1, H - 1, Z - 1], [W - 1, 0, Z - 1]]])
    offsets = rng.uniform(-0.45, 0.45, ijk.shape)
    return np.arange(len(ijk)) % 3, ijk, offsets


def labels_for(classes, names):
    """Every spelling the import must accept: '<class>-<n>', '<class>', and another case."""
    styles = [lambda c, n: f"{c}-{n}", lambda c, n: c, lambda c, n: f"{c.lower()}-{n}"]
    return [styles[n % 3](names[c], n + 1) for n, c in enumerate(classes)]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prostate(prostate_dir) -> CaseGrid:
    image = prostate_dir / "Prostatex_0000.nii.gz"
    return CaseGrid.from_geometry("Prostatex", nifti_geometry(image), [str(image)])


# ---------------------------------------------------------------- real data: clicks land on voxels

def test_prostate_affine_is_oblique(prostate):
    """The test below means something: the image's axes are tilted off the world axes."""
    rotation = prostate.affine[:3, :3] / np.linalg.norm(prostate.affine[:3, :3], axis=0)
    assert np.abs(rotation - np.diag(np.diag(rotation))).max() > 0.1
    assert prostate.shape == (19, 384, 384)


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_points_land_on_their_voxels(prostate, tmp_path, system):
    classes, ijk, offsets = known_voxels(prostate)
    ras = apply_affine(prostate.affine, ijk + offsets)
    path = write_markups(tmp_path / "clicks" / "Prostatex.mrk.json", labels_for(classes, PROSTATE_CLASSES),
                         to_frame(ras, system), system)
    assert detect_format(tmp_path / "clicks") == "slicer"
    got = import_annotations(str(tmp_path / "clicks"), None, {"Prostatex": prostate}, PROSTATE_CLASSES)
    ann = got["Prostatex"]
    np.testing.assert_array_equal(ann.points, store_rows(classes, ijk))
    assert ann.points.dtype == np.int32 and ann.duplicates == 0
    assert ann.source == {"format": "slicer", "file": str(path), "sha256": sha256(path)}
    # An axis-aligned mapping (spacing only, the obliquity ignored) misses: the affine matters.
    naive = np.rint((ras - prostate.affine[:3, 3]) / np.abs(np.diag(prostate.affine)[:3])).astype(int)
    assert (naive != ijk).any(axis=1).mean() > 0.5


def test_slicer_file_named_after_the_image(prostate, tmp_path):
    """``Prostatex_0000.mrk.json`` (the image's name) is the case ``Prostatex`` of the nifti layout."""
    classes, ijk, offsets = known_voxels(prostate, n=5)
    ras = apply_affine(prostate.affine, ijk + offsets)
    write_markups(tmp_path / "Prostatex_0000.mrk.json", labels_for(classes, PROSTATE_CLASSES), ras, "RAS")
    got = import_annotations(tmp_path, "slicer", {"Prostatex": prostate}, PROSTATE_CLASSES)
    np.testing.assert_array_equal(got["Prostatex"].points, store_rows(classes, ijk))


def test_csv_voxel_and_world_land_on_their_voxels(prostate, tmp_path):
    classes, ijk, offsets = known_voxels(prostate)
    # class by name and by index; the case by its name and by its image's name
    cls = [PROSTATE_CLASSES[c] if n % 2 else str(c) for n, c in enumerate(classes)]
    case = ["Prostatex" if n % 3 else "Prostatex_0000" for n in range(len(classes))]
    voxel = write_csv(tmp_path / "voxel.csv", ["case", "class", "i", "j", "k"],
                      [(case[n], cls[n], *ijk[n]) for n in range(len(ijk))])
    ras = apply_affine(prostate.affine, ijk + offsets)
    spaces = ["RAS" if n % 2 else "LPS" for n in range(len(ijk))]
    world = write_csv(tmp_path / "world.csv", ["case", "class", "x", "y", "z", "space"],
                      [(case[n], cls[n], *to_frame(ras[n], spaces[n]), spaces[n]) for n in range(len(ijk))])
    expected = store_rows(classes, ijk)
    for path, columns in ((voxel, "voxel"), (world, "world")):
        assert detect_format(path) == "csv"
        ann = import_annotations(str(path), None, {"Prostatex": prostate}, PROSTATE_CLASSES)["Prostatex"]
        np.testing.assert_array_equal(ann.points, expected)
        assert ann.source == {"format": "csv", "file": str(path), "sha256": sha256(path), "columns": columns}


def test_prostate_scribble_keeps_every_voxel(prostate, prostate_dir, tmp_path):
    scribble = prostate_dir / "Prostatex_0000_scribble.nii.gz"
    (tmp_path / "scribbles").mkdir()
    (tmp_path / "scribbles" / "Prostatex.nii.gz").symlink_to(scribble)
    assert detect_format(tmp_path / "scribbles") == "nifti"
    ann = import_annotations(str(tmp_path / "scribbles"), None, {"Prostatex": prostate},
                             PROSTATE_CLASSES)["Prostatex"]  # ignore: 255 by default
    raw = np.asanyarray(nib.load(str(scribble)).dataobj)  # (i, j, k)
    values, counts = np.unique(raw, return_counts=True)
    assert {int(v): int(n) for v, n in zip(values, counts) if v != 255} == dict(enumerate(ann.counts(3)))
    i, j, k = np.nonzero(raw != 255)
    np.testing.assert_array_equal(ann.points, store_rows(raw[i, j, k], np.column_stack([i, j, k])))
    assert ann.duplicates == 0 and ann.source["ignore"] == 255 and ann.source["sha256"] == sha256(scribble)


def acdc_grids(acdc_h5_dir, cases) -> dict[str, CaseGrid]:
    grids = {}
    for case in cases:
        with h5py.File(acdc_h5_dir / f"{case}.h5", "r") as f:
            grids[case] = CaseGrid(case, f["image"].shape, None, None, (str(acdc_h5_dir / f"{case}.h5"),))
    return grids


def test_acdc_h5_scribbles_keep_every_voxel(acdc_h5_dir):
    grids = acdc_grids(acdc_h5_dir, ACDC_SAMPLE)
    got = import_annotations("scribble", "h5-key", grids, ACDC_CLASSES)  # ignore: 4 = len(classes)
    assert list(got) == ACDC_SAMPLE
    for case, ann in got.items():
        with h5py.File(grids[case].files[0], "r") as f:
            raw = f["scribble"][()]  # (Z, H, W)
        values, counts = np.unique(raw, return_counts=True)
        assert {int(v): int(n) for v, n in zip(values, counts) if v != 4} == dict(enumerate(ann.counts(4)))
        z, y, x = np.nonzero(raw != 4)
        np.testing.assert_array_equal(ann.points, store_rows(raw[z, y, x], np.column_stack([x, y, z])))
        assert ann.source["key"] == "scribble" and ann.source["ignore"] == 4 and ann.duplicates == 0


# ---------------------------------------------------------------- round trips

def synthetic_annotations(grids, seed=0) -> dict[str, Annotation]:
    rng = np.random.default_rng(seed)
    out = {}
    for case, g in grids.items():
        Z, H, W = g.shape
        flat = rng.choice(Z * H * W, size=60, replace=False)  # distinct voxels: a sparse map holds one class
        zyx = np.column_stack(np.unravel_index(flat, g.shape))
        points = store_rows(rng.integers(0, 4, 60), zyx[:, ::-1])
        out[case] = Annotation(case, points.astype(np.int32), {"format": "simulated"}, 0)
    return out


def export_and_import(annotations, grids, classes, out, fmt):
    paths = export_annotations(annotations, grids, classes, out, fmt)
    back = import_annotations(str(paths[0] if fmt == "csv" else out), None, grids, classes)
    return paths, back


@pytest.mark.parametrize("fmt", ["slicer", "csv", "nifti"])
def test_round_trip(tmp_path, fmt):
    """Oblique, spacing-only and geometry-less grids (the world_affine fallbacks)."""
    grids = {"oblique": grid("oblique"), "spacing": grid("spacing", None, (5, 17, 13), (3.0, 0.7, 0.9)),
             "bare": grid("bare", None, (4, 11, 9))}
    annotations = synthetic_annotations(grids)
    paths, back = export_and_import(annotations, grids, ACDC_CLASSES, tmp_path / "out", fmt)
    assert list(back) == list(grids)
    for case in grids:
        np.testing.assert_array_equal(back[case].points, annotations[case].points)
        assert back[case].points.dtype == np.int32 and back[case].source["format"] == fmt
    expected = ([tmp_path / "out" / "clicks.csv"] if fmt == "csv" else
                [tmp_path / "out" / f"{c}{'.mrk.json' if fmt == 'slicer' else '.nii.gz'}" for c in grids])
    assert paths == expected
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in expected)  # no temp left
    before = {p: p.read_bytes() for p in paths}
    with pytest.raises(DataError, match="already exists"):
        export_annotations(annotations, grids, ACDC_CLASSES, tmp_path / "out", fmt)
    assert {p: p.read_bytes() for p in paths} == before


def test_exported_files_are_what_viewers_expect(tmp_path):
    g = grid("c1")
    ann = Annotation("c1", np.array([[1, 2, 3, 4], [3, 5, 19, 23]], np.int32), {}, 0)
    export_annotations({"c1": ann}, {"c1": g}, ACDC_CLASSES, tmp_path / "s", "slicer")
    markup = json.loads((tmp_path / "s" / "c1.mrk.json").read_text())["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    assert [p["label"] for p in markup["controlPoints"]] == ["RV-1", "LV-1"]
    np.testing.assert_allclose(markup["controlPoints"][0]["position"],
                               to_frame(apply_affine(OBLIQUE, [4, 3, 2]), "LPS"), atol=1e-9)
    export_annotations({"c1": ann}, {"c1": g}, ACDC_CLASSES, tmp_path / "c.csv", "csv")
    assert (tmp_path / "c.csv").read_text() == "case,class,i,j,k\nc1,RV,4,3,2\nc1,LV,23,19,5\n"
    export_annotations({"c1": ann}, {"c1": g}, ACDC_CLASSES, tmp_path / "n", "nifti")
    img = nib.load(str(tmp_path / "n" / "c1.nii.gz"))
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.uint8 and data.shape == (24, 20, 6) and np.allclose(img.affine, OBLIQUE)
    assert data[4, 3, 2] == 1 and data[23, 19, 5] == 3 and (data == 255).sum() == data.size - 2


@pytest.mark.parametrize("fmt", ["slicer", "csv", "nifti"])
def test_round_trip_real_prostate_scribble(prostate, prostate_dir, tmp_path, fmt):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "Prostatex.nii.gz").symlink_to(prostate_dir / "Prostatex_0000_scribble.nii.gz")
    grids = {"Prostatex": prostate}
    first = import_annotations(str(tmp_path / "in"), "nifti", grids, PROSTATE_CLASSES)
    _, back = export_and_import(first, grids, PROSTATE_CLASSES, tmp_path / "out", fmt)
    np.testing.assert_array_equal(back["Prostatex"].points, first["Prostatex"].points)


# ---------------------------------------------------------------- bad input

def markups_error(tmp_path, labels, positions, system="RAS", grids=None, **kwargs) -> str:
    write_markups(tmp_path / "m" / "c1.mrk.json", labels, positions, system, **kwargs)
    with pytest.raises(DataError) as err:
        import_annotations(tmp_path / "m", None, grids or {"c1": grid()}, ACDC_CLASSES)
    return str(err.value)


def test_point_outside_the_volume(tmp_path):
    inside = apply_affine(OBLIQUE, [[-0.49, 0, 0], [23.49, 19.4, 5.4]])  # round onto the edge voxels
    outside = apply_affine(OBLIQUE, [24.1, 3, 2])
    message = markups_error(tmp_path, ["RV-1", "LV-1", "Myo-7"], [*inside, outside])
    assert "c1.mrk.json" in message and "'3'" in message and "'Myo-7'" in message
    assert "(24, 3, 2)" in message and "24 x 20 x 6" in message
    write_csv(tmp_path / "o.csv", ["case", "class", "i", "j", "k"], [("c1", "RV", 1, 1, 1), ("c1", "RV", 1, 1, 6)])
    with pytest.raises(DataError, match=r"o\.csv: line 3: lands on voxel \(i, j, k\) = \(1, 1, 6\)"):
        import_annotations(tmp_path / "o.csv", None, {"c1": grid()}, ACDC_CLASSES)


def test_edge_voxels_round_inside(tmp_path):
    positions = apply_affine(OBLIQUE, [[-0.49, 0, 0], [23.49, 19.4, 5.4]])
    write_markups(tmp_path / "m" / "c1.mrk.json", ["RV-1", "LV-1"], positions, "RAS")
    ann = import_annotations(tmp_path / "m", None, {"c1": grid()}, ACDC_CLASSES)["c1"]
    np.testing.assert_array_equal(ann.points, [[1, 0, 0, 0], [3, 5, 19, 23]])


def test_unknown_class_lists_known_ones(tmp_path):
    message = markups_error(tmp_path, ["RV-1", "Liver-2"], apply_affine(OBLIQUE, [[1, 1, 1], [2, 2, 2]]))
    assert "'Liver-2'" in message and "known classes: 0=background, 1=RV, 2=Myo, 3=LV" in message
    write_csv(tmp_path / "k.csv", ["case", "class", "i", "j", "k"], [("c1", "7", 1, 1, 1)])
    with pytest.raises(DataError, match=r"k\.csv: line 2: class '7'.*known classes: 0=background"):
        import_annotations(tmp_path / "k.csv", None, {"c1": grid()}, ACDC_CLASSES)


@pytest.mark.parametrize("kind", ["Curve", "ClosedCurve", "Plane", "Line", "Angle", "ROI"])
def test_other_markup_types_refused(tmp_path, kind):
    message = markups_error(tmp_path, ["RV-1"], apply_affine(OBLIQUE, [[1, 1, 1]]), kind=kind)
    assert "c1.mrk.json" in message and f"type {kind!r}" in message and "'Fiducial'" in message


def test_unknown_coordinate_system_or_units(tmp_path):
    message = markups_error(tmp_path, ["RV-1"], [[1, 2, 3]], system="IJK")
    assert "c1.mrk.json" in message and "'IJK'" in message and "'LPS' or 'RAS'" in message
    message = markups_error(tmp_path / "u", ["RV-1"], [[1, 2, 3]], coordinateUnits="cm")
    assert "'cm'" in message


def test_malformed_markups(tmp_path):
    path = write_markups(tmp_path / "m" / "c1.mrk.json", ["RV-1", "LV-1"], apply_affine(OBLIQUE, [[1, 2, 3]] * 2))
    doc = json.loads(path.read_text())
    doc["markups"][0]["controlPoints"][1]["position"] = [1, "a", 3]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"c1\.mrk\.json: control point id '2' \(label 'LV-1'\): expected a position "
                                        r"of 3 finite numbers, found \[1, 'a', 3\]"):
        import_annotations(tmp_path / "m", None, {"c1": grid()}, ACDC_CLASSES)
    path.write_text('{"markups": [')
    with pytest.raises(DataError, match=r"c1\.mrk\.json: not valid JSON \(line 1, column 14"):
        import_annotations(tmp_path / "m", None, {"c1": grid()}, ACDC_CLASSES)
    path.write_text('{"points": []}')
    with pytest.raises(DataError, match=r"expected 3D Slicer markups JSON with a 'markups' list.*found \['points'\]"):
        import_annotations(tmp_path / "m", None, {"c1": grid()}, ACDC_CLASSES)


def test_markups_defaults_and_undefined_points(tmp_path):
    """No coordinateSystem = LPS (Slicer's schema default); a point not yet placed is skipped, counted."""
    ras = apply_affine(OBLIQUE, [[3, 4, 5], [6, 7, 1]])
    path = write_markups(tmp_path / "c1.mrk.json", ["RV-1", "LV-1"], to_frame(ras, "LPS"))
    doc = json.loads(path.read_text())
    del doc["markups"][0]["coordinateSystem"]
    doc["markups"][0]["controlPoints"][1]["positionStatus"] = "undefined"
    path.write_text(json.dumps(doc))
    ann = import_annotations(tmp_path, "slicer", {"c1": grid()}, ACDC_CLASSES)["c1"]
    np.testing.assert_array_equal(ann.points, [[1, 5, 4, 3]])
    assert ann.source["undefined_points"] == 1


def write_map(path, zhw, affine=OBLIQUE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.transpose(zhw, (2, 1, 0)).astype(np.uint8), affine), str(path))
    return path


def sparse_map(shape=SHAPE, ignore=255):
    data = np.full(shape, ignore, np.uint8)
    data[1, 2, 3], data[4, 5, 6], data[0, 0, 0] = 1, 3, 0
    return data


def test_sparse_map_wrong_shape_or_affine(tmp_path):
    write_map(tmp_path / "shape" / "c1.nii.gz", sparse_map((6, 20, 25)))
    with pytest.raises(DataError, match=r"shape/c1\.nii\.gz: sparse map of shape 25 x 20 x 6 .*expected the "
                                        r"image's grid 24 x 20 x 6 .*c1_0000\.nii\.gz"):
        import_annotations(tmp_path / "shape", None, {"c1": grid()}, ACDC_CLASSES)
    shifted = OBLIQUE.copy()
    shifted[0, 3] += 0.5
    write_map(tmp_path / "affine" / "c1.nii.gz", sparse_map(), shifted)
    with pytest.raises(DataError, match=r"c1\.nii\.gz: sparse map affine .* differs from the affine .* of "
                                        r"/src/c1_0000\.nii\.gz \(largest difference 0\.5"):
        import_annotations(tmp_path / "affine", None, {"c1": grid()}, ACDC_CLASSES)
    close = OBLIQUE + 2e-5  # float32 headers differ by ~1e-6: within tolerance
    write_map(tmp_path / "close" / "c1.nii.gz", sparse_map(), close)
    ann = import_annotations(tmp_path / "close", None, {"c1": grid()}, ACDC_CLASSES)["c1"]
    np.testing.assert_array_equal(ann.points, [[0, 0, 0, 0], [1, 1, 2, 3], [3, 4, 5, 6]])
    # an .h5 source has no affine: the shape alone is compared
    bare = import_annotations(tmp_path / "close", None, {"c1": grid(affine=None)}, ACDC_CLASSES)["c1"]
    np.testing.assert_array_equal(bare.points, ann.points)


def test_sparse_map_values(tmp_path):
    bad = sparse_map()
    bad[2, :, :3] = 7
    write_map(tmp_path / "bad" / "c1.nii.gz", bad)
    with pytest.raises(DataError, match=r"c1\.nii\.gz: value 7 in 60 voxel\(s\): neither a class index \(0\.\.3\) "
                                        r"nor the ignore value 255"):
        import_annotations(tmp_path / "bad", None, {"c1": grid()}, ACDC_CLASSES)
    write_map(tmp_path / "dense" / "c1.nii.gz", np.ones(SHAPE, np.uint8))
    with pytest.raises(DataError, match="no voxel holds the ignore value 255.*dense label"):
        import_annotations(tmp_path / "dense", None, {"c1": grid()}, ACDC_CLASSES)
    write_map(tmp_path / "ign" / "c1.nii.gz", sparse_map(ignore=9))
    ann = import_annotations(tmp_path / "ign", None, {"c1": grid()}, ACDC_CLASSES, ignore=9)["c1"]
    assert ann.counts(4) == [1, 1, 0, 1] and ann.source["ignore"] == 9
    with pytest.raises(DataError, match="ignore value 2 must be an integer that is not a class index"):
        import_annotations(tmp_path / "ign", None, {"c1": grid()}, ACDC_CLASSES, ignore=2)


def test_csv_missing_columns_and_bad_rows(tmp_path):
    write_csv(tmp_path / "a.csv", ["case", "class", "i", "j"], [("c1", "RV", 1, 2)])
    with pytest.raises(DataError, match=r"a\.csv: missing column\(s\) \['k'\]; expected .*'case,class,i,j,k'.*"
                                        r"'case,class,x,y,z,space'.*found \['case', 'class', 'i', 'j'\]"):
        import_annotations(tmp_path / "a.csv", None, {"c1": grid()}, ACDC_CLASSES)
    write_csv(tmp_path / "w.csv", ["case", "class", "x", "y", "z"], [("c1", "RV", 1, 2, 3)])
    with pytest.raises(DataError, match=r"missing column\(s\) \['space'\]"):
        import_annotations(tmp_path / "w.csv", None, {"c1": grid()}, ACDC_CLASSES)
    write_csv(tmp_path / "r.csv", ["case", "class", "i", "j", "k"], [("c1", "RV", 1, 2, 3), (), ("c1", "RV", 1.5, 2, 3)])
    with pytest.raises(DataError, match=r"r\.csv: line 4: expected integer voxel indices for i, j, k, found "
                                        r"\['1\.5', '2', '3'\]"):
        import_annotations(tmp_path / "r.csv", None, {"c1": grid()}, ACDC_CLASSES)
    write_csv(tmp_path / "s.csv", ["case", "class", "x", "y", "z", "space"], [("c1", "RV", 1, 2, 3, "IJK")])
    with pytest.raises(DataError, match=r"s\.csv: line 2: space 'IJK'; expected 'RAS' or 'LPS'"):
        import_annotations(tmp_path / "s.csv", None, {"c1": grid()}, ACDC_CLASSES)


def test_annotation_without_image(tmp_path):
    write_csv(tmp_path / "c.csv", ["case", "class", "i", "j", "k"], [("c1", "RV", 1, 2, 3), ("c2", "RV", 1, 2, 3)])
    with pytest.raises(DataError, match=r"c\.csv: line 3: annotation for case 'c2', but the source has no image "
                                        r"for it \(1 case\(s\): c1\)$"):
        import_annotations(tmp_path / "c.csv", None, {"c1": grid()}, ACDC_CLASSES)
    write_markups(tmp_path / "m" / "c1.mrk.json", ["RV"], [[0, 0, 0]])
    write_markups(tmp_path / "m" / "c1x.mrk.json", ["RV"], [[0, 0, 0]])
    with pytest.raises(DataError, match=r"c1x\.mrk\.json: annotation for case 'c1x', but the source has no image "
                                        r"for it \(1 case\(s\): c1\); did you mean 'c1'\?"):
        import_annotations(tmp_path / "m", None, {"c1": grid()}, ACDC_CLASSES, partial=True)
    write_map(tmp_path / "n" / "c3.nii.gz", sparse_map())
    with pytest.raises(DataError, match=r"c3\.nii\.gz: annotation for case 'c3'"):
        import_annotations(tmp_path / "n", None, {"c1": grid()}, ACDC_CLASSES)
    write_map(tmp_path / "two" / "c1.nii.gz", sparse_map())
    write_map(tmp_path / "two" / "c1_0000.nii.gz", sparse_map())
    with pytest.raises(DataError, match="a second annotation for case 'c1'"):
        import_annotations(tmp_path / "two", None, {"c1": grid()}, ACDC_CLASSES)


def test_duplicates_counted_and_conflicts_kept(tmp_path):
    ras = apply_affine(OBLIQUE, [[3.2, 4, 5], [2.8, 4.1, 4.9], [3, 4, 5], [7, 8, 1]])
    write_markups(tmp_path / "m" / "c1.mrk.json", ["RV-1", "RV-2", "LV-1", "Myo"], ras, "RAS")
    ann = import_annotations(tmp_path / "m", None, {"c1": grid()}, ACDC_CLASSES)["c1"]
    np.testing.assert_array_equal(ann.points, [[1, 5, 4, 3], [2, 1, 8, 7], [3, 5, 4, 3]])
    assert ann.duplicates == 1 and ann.source["conflicts"] == 1  # two classes on voxel (3, 4, 5): kept
    write_csv(tmp_path / "d.csv", ["case", "class", "i", "j", "k"], [("c1", "RV", 1, 2, 3)] * 3)
    ann = import_annotations(tmp_path / "d.csv", None, {"c1": grid()}, ACDC_CLASSES)["c1"]
    assert ann.duplicates == 2 and len(ann.points) == 1 and "conflicts" not in ann.source
    with pytest.raises(DataError, match="1 voxel\\(s\\) carry two classes.*export as slicer or csv"):
        export_annotations({"c1": Annotation("c1", np.array([[1, 5, 4, 3], [3, 5, 4, 3]], np.int32), {}, 0)},
                           {"c1": grid()}, ACDC_CLASSES, tmp_path / "x", "nifti")
    assert not (tmp_path / "x").exists()  # nothing written


def test_case_without_annotation_needs_partial(tmp_path):
    grids = {f"c{n}": grid(f"c{n}") for n in range(1, 9)}
    write_markups(tmp_path / "m" / "c1.mrk.json", ["RV-1"], apply_affine(OBLIQUE, [[1, 1, 1]]), "RAS")
    write_markups(tmp_path / "m" / "c2.mrk.json", [], [], "RAS")  # a file without a point
    with pytest.raises(DataError, match=r"m: 6 of 8 case\(s\) have no annotation: c3, c4, c5, c6, c7, \.\.\.; "
                                        r"annotate them, or pass --clicks-partial"):
        import_annotations(tmp_path / "m", None, grids, ACDC_CLASSES)  # refused before any file is read
    got = import_annotations(tmp_path / "m", None, grids, ACDC_CLASSES, partial=True)
    assert list(got) == ["c1"]
    two = {c: grids[c] for c in ("c1", "c2")}
    with pytest.raises(DataError, match=r"m: 1 of 2 case\(s\) have no annotation: c2 \(no annotated point\);"):
        import_annotations(tmp_path / "m", None, two, ACDC_CLASSES)


def test_h5_key(tmp_path):
    scribble = np.full(SHAPE, 4, np.uint16)
    scribble[1, 2, 3], scribble[2, 0, 0] = 0, 3
    for case, keys in (("a", {"scribble": scribble}), ("b", {})):
        with h5py.File(tmp_path / f"{case}.h5", "w") as f:
            f["image"] = np.zeros(SHAPE, np.float32)
            for k, v in keys.items():
                f[k] = v
    grids = {c: CaseGrid(c, SHAPE, None, None, (str(tmp_path / f"{c}.h5"),)) for c in "ab"}
    with pytest.raises(DataError, match=r"b\.h5: missing key\(s\) \['scribble'\]; .*found \['image'\]"):
        import_annotations("scribble", "h5-key", grids, ACDC_CLASSES)
    got = import_annotations("scribble", "h5-key", grids, ACDC_CLASSES, partial=True)
    assert list(got) == ["a"] and got["a"].source["sha256"] == sha256(tmp_path / "a.h5")
    np.testing.assert_array_equal(got["a"].points, [[0, 1, 2, 3], [3, 2, 0, 0]])
    small = {"a": CaseGrid("a", (6, 20, 23), None, None, (str(tmp_path / "a.h5"),))}
    with pytest.raises(DataError, match=r"a\.h5: key 'scribble' has shape \(6, 20, 24\).*expected.*\(6, 20, 23\)"):
        import_annotations("scribble", "h5-key", small, ACDC_CLASSES)


def test_detect_format(tmp_path):
    assert FORMATS == ("slicer", "nifti", "csv", "h5-key")
    write_map(tmp_path / "n" / "c1.nii", sparse_map())
    assert detect_format(tmp_path / "n") == "nifti"
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.mrk.json").write_text("{}")
    (tmp_path / "mixed" / "a.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="holds both Slicer markups.*pass --clicks-format"):
        detect_format(tmp_path / "mixed")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.fcsv").write_text("")
    (tmp_path / "old" / "notes.txt").write_text("")
    with pytest.raises(DataError, match=r"old: expected a folder of 3D Slicer markups.*found a folder with 1 \.fcsv, "
                                        r"1 \.txt \(legacy Slicer \.fcsv"):
        detect_format(tmp_path / "old")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(DataError, match=r"a\.json: expected .*; found a \.json file \(.*<case>\.mrk\.json"):
        detect_format(tmp_path / "a.json")
    with pytest.raises(DataError, match=r"scribble: file not found; expected .*--clicks-format h5-key"):
        detect_format(tmp_path / "scribble")
    with pytest.raises(DataError, match="unknown clicks format 'points'"):
        import_annotations(tmp_path / "n", "points", {"c1": grid()}, ACDC_CLASSES)


def test_export_refusals_write_nothing(tmp_path):
    ann = synthetic_annotations({"c1": grid()})
    with pytest.raises(DataError, match="case 'c1' has annotations but no grid"):
        export_annotations(ann, {}, ACDC_CLASSES, tmp_path / "a", "slicer")
    with pytest.raises(DataError, match="cannot export clicks as 'h5-key'"):
        export_annotations(ann, {"c1": grid()}, ACDC_CLASSES, tmp_path / "a", "h5-key")
    with pytest.raises(DataError, match="ignore value 3 must be an integer that is not a class index"):
        export_annotations(ann, {"c1": grid()}, ACDC_CLASSES, tmp_path / "a", "nifti", ignore=3)
    outside = {"c1": Annotation("c1", np.array([[1, 0, 0, 0], [1, 6, 0, 0]], np.int32), {}, 0)}
    with pytest.raises(DataError, match=r"case c1: 1 point\(s\) outside the volume, e\.g\. voxel \(i, j, k\) = "
                                        r"\(0, 0, 6\) in 24 x 20 x 6"):
        export_annotations(outside, {"c1": grid()}, ACDC_CLASSES, tmp_path / "a", "csv")
    unknown = {"c1": Annotation("c1", np.array([[4, 0, 0, 0]], np.int32), {}, 0)}
    with pytest.raises(DataError, match="class index 4 in 1 point.*known classes: 0=background"):
        export_annotations(unknown, {"c1": grid()}, ACDC_CLASSES, tmp_path / "a", "slicer")
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="expected a folder to write the clicks into, found a file"):
        export_annotations(ann, {"c1": grid()}, ACDC_CLASSES, tmp_path / "f", "slicer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
