"""A damaged store is refused or reported, never read as other numbers: every array, every way.

Each test damages a real copy of a real store (a deleted file, a flipped byte, edited metadata) and
checks what the reader, ``check_cases`` and ``pscv inspect --verify`` say about it.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pscv_dist.cli import main
from pscv_dist.data import SliceStore
from pscv_dist.data import format as fmt
from pscv_dist.errors import DataError, StoreError

CASES = ["phantom_000", "phantom_001"]
ARRAYS = [fmt.SLICE_IMAGE, fmt.SLICE_LABEL, fmt.SLICE_CLICKS, fmt.SLICE_CASE, fmt.SLICE_Z, fmt.SLICE_PRESENT,
          "volumes/phantom_001/image", "volumes/phantom_001/label"]


@pytest.fixture(scope="module")
def pristine(phantom_src, tmp_path_factory) -> Path:
    from pscv_dist.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("integrity") / "s.zarr"
    prepare(PrepareConfig(str(phantom_src), str(out), "nifti", size=16, cases=CASES, folds=2, progress=False))
    return out


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    """A fresh copy to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "s.zarr"))


def _chunk(store: Path, array: str) -> Path:
    files = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())
    assert files, array
    return files[0]


def _flip(path: Path, where: float = 0.4) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x5A
    path.write_bytes(bytes(raw))


def _edit_meta(store: Path, edit) -> None:
    path = store / "zarr.json"
    doc = json.loads(path.read_text())
    edit(doc["attributes"][fmt.FORMAT_NAME])
    path.write_text(json.dumps(doc))


def _inspect(store: Path, capsys, *flags) -> tuple[int, str, str]:
    rc = main(["inspect", str(store), *flags])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_intact_store_verifies(store, capsys):
    s = SliceStore(str(store))
    assert s.verify() == [] and s.verify_report() == {}
    s.check_cases(CASES)
    rc, out, _ = _inspect(store, capsys, "--verify")
    assert rc == 0 and "verify      OK" in out


def test_written_arrays_follow_the_format_table(store):
    import zarr

    s = SliceStore(str(store))
    group = zarr.open_group(str(store), mode="r")
    for path, spec in s.meta.array_specs().items():
        spec.check(group[path], str(store))  # dtype, shape, chunks, shards, crc32c
        expected = ["BloscCodec", "Crc32cCodec"] if path != fmt.SLICE_IMAGE else ["Crc32cCodec"]
        assert [type(c).__name__ for c in group[path].compressors] == expected, path
    assert set(s.meta.checksums) == {p.relative_to(store).as_posix() for p in store.rglob("*")
                                     if p.is_file() and p != store / "zarr.json"}


@pytest.mark.parametrize("array", ARRAYS)
def test_missing_chunk_file_is_refused_at_open(store, array, capsys):
    _chunk(store, array).unlink()
    with pytest.raises(StoreError, match=f"{array}: file .* is missing"):
        SliceStore(str(store))
    rc, _, err = _inspect(store, capsys, "--verify")
    assert rc == 2 and f"{array}: file" in err and "missing" in err


def test_missing_training_shard_does_not_train_on_zeros(store):
    (store / "slices" / "image" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(StoreError, match="slices/image"):
        SliceStore(str(store))


@pytest.mark.parametrize("array", ARRAYS)
def test_garbled_chunk_is_found(store, array, capsys):
    """Every array: the flipped byte is either refused at open (arrays read whole at open) or named by
    --verify and refused when read; it never reads as other pixels."""
    _flip(_chunk(store, array))
    try:
        s = SliceStore(str(store))
    except StoreError as exc:
        assert array in str(exc) and "could not be decoded" in str(exc)
        rc, _, err = _inspect(store, capsys, "--verify")
        assert rc == 2 and array in err
        return
    case = array.split("/")[1] if array.startswith("volumes/") else array
    assert s.verify() == [case]
    assert any(array in key for key in s.verify_report())
    rc, out, _ = _inspect(store, capsys, "--verify")
    assert rc == 1 and "DAMAGED" in out and array in out
    if array.startswith("volumes/"):
        with pytest.raises(StoreError, match=f"{array} \\(case 'phantom_001'\\): chunk could not be decoded"):
            s.volume("phantom_001")
        with pytest.raises(StoreError, match="phantom_001"):
            s.check_cases(CASES)
        s.check_cases(["phantom_000"])  # the intact case still passes
    else:
        errors = []
        for i in range(len(s)):
            try:
                s[i]
            except StoreError as exc:
                errors.append(str(exc))
        assert len(errors) == 1 and f"{array} (slice " in errors[0] and "could not be decoded" in errors[0]


def test_garbled_volume_is_a_one_line_error_not_a_blosc_traceback(store, capsys):
    _flip(_chunk(store, "volumes/phantom_001/image"), where=0.1)
    rc, out, err = _inspect(store, capsys, "--verify")
    assert rc == 1 and "phantom_001" in out
    with pytest.raises(StoreError) as info:
        SliceStore(str(store)).volume("phantom_001")
    assert "\n" not in str(info.value) and "volumes/phantom_001/image" in str(info.value)


def test_truncated_file_is_refused_at_open(store):
    path = _chunk(store, fmt.SLICE_LABEL)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StoreError, match="slices/label: file .* bytes, expected"):
        SliceStore(str(store))


def test_array_with_another_dtype_is_refused(store):
    meta = store / "slices" / "label" / "zarr.json"
    text = meta.read_text()
    assert '"data_type": "uint8"' in text
    meta.write_text(text.replace('"data_type": "uint8"', '"data_type": "int16"'))  # same size, other dtype
    with pytest.raises(StoreError, match="slices/label: expected dtype uint8, found int16"):
        SliceStore(str(store))


BAD_METADATA = {
    "n_slices larger than the arrays": (lambda m: m.update(n_slices=m["n_slices"] + 5), "n_slices 15"),
    "a case longer than its arrays": (
        lambda m: (m["cases"]["phantom_001"].update(n_slices=6, shape=[6, 40, 48]), m.update(n_slices=11)),
        "slices/image: expected shape"),
    "split naming an unknown case": (lambda m: m["splits"]["fold0/val"].append("ghost"), "split 'fold0/val'.*ghost"),
    "case missing a field": (lambda m: m["cases"]["phantom_000"].pop("sha256"), "case 'phantom_000'.*sha256"),
    "first_slice outside the arrays": (lambda m: m["cases"]["phantom_001"].update(first_slice=99),
                                       "case 'phantom_001' first_slice 99"),
    "first_slice not a number": (lambda m: m["cases"]["phantom_001"].update(first_slice="five"),
                                 "first_slice must be a non-negative integer"),
    "n_slices negative": (lambda m: m["cases"]["phantom_000"].update(n_slices=-1), "n_slices must be"),
    "slices swapped between cases": (
        lambda m: (m["cases"]["phantom_000"].update(n_slices=4, shape=[4, 40, 48]),
                   m["cases"]["phantom_001"].update(first_slice=4, n_slices=6, shape=[6, 40, 48])),
        "case 'phantom_000'|do not belong"),
    "checksums missing": (lambda m: m.pop("checksums"), "misses 'checksums'"),
    "classes not a list": (lambda m: m.update(classes="background"), "'classes' must be list"),
    "an older format version": (lambda m: m.update(version=1), "version 1 is not supported.*convert it again with `pscv prepare .* --layout nifti --size 16 --overwrite`"),
}


@pytest.mark.parametrize("name", list(BAD_METADATA))
def test_inconsistent_metadata_is_refused(store, name, capsys):
    edit, message = BAD_METADATA[name]
    _edit_meta(store, edit)
    with pytest.raises(StoreError, match=message):
        SliceStore(str(store))
    rc, _, err = _inspect(store, capsys, "--verify")
    assert rc == 2 and err.startswith("pscv inspect: error: ") and len(err.strip().splitlines()) == 1, err


def test_errors_are_data_errors_and_unknown_names_stay_key_errors(store):
    assert issubclass(StoreError, DataError) and issubclass(StoreError, ValueError)
    s = SliceStore(str(store))
    for call in (lambda: s.split("nope"), lambda: s.volume("nope"), lambda: s.check_cases(["nope"]),
                 lambda: s.slice_indices(["nope"])):
        with pytest.raises(KeyError, match="nope"):
            call()


def test_check_cases_reads_and_hashes_the_volumes(store):
    """A chunk rewritten with valid CRC but other values (what a buggy tool could do) fails the hash."""
    import zarr

    arr = zarr.open_group(str(store), mode="r+")["volumes/phantom_000/label"]
    arr[0, 0, 0] = (int(arr[0, 0, 0]) + 1) % 4
    s = SliceStore.__new__(SliceStore)  # the file sizes changed, so opening refuses it ...
    with pytest.raises(StoreError, match="volumes/phantom_000/label"):
        SliceStore.__init__(s, str(store))
    _edit_meta(store, lambda m: m["checksums"].update(  # ... unless the checksums were rewritten too
        {k: [(store / k).stat().st_size, m["checksums"][k][1]] for k in m["checksums"]}))
    s = SliceStore(str(store))
    with pytest.raises(StoreError, match="volumes/phantom_000: content differs"):
        s.check_cases(["phantom_000"])
    assert np.asarray(s.volume("phantom_001")["label"]).any()
