"""Where a store may be written and how it replaces an old one: the user's data is never deleted.

Real folders, real fsspec file systems, real processes and real ``flock`` locks; no mocks.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pscv_dist.cli import main
from pscv_dist.data import SliceStore

from .fixtures import blob_volume, save_nifti, write_nifti_dataset

ROOT = Path(__file__).resolve().parents[2]


def tree(path: Path) -> dict[str, str]:
    """Everything under ``path``: relative name -> content hash (or link target)."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(src, out, capsys, *extra, rc=2) -> str:
    code = main(["prepare", str(src), str(out), "--layout", "nifti", "--size", "16", *extra])
    err = capsys.readouterr().err
    assert code == rc, err
    if rc == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("pscv prepare: error: ") and "Traceback" not in err, err
    return err


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f".{name}.*"))


@pytest.fixture
def src(tmp_path) -> Path:
    return write_nifti_dataset(tmp_path / "data" / "src", n=2)


# --- 1. --overwrite never destroys the source or anything that is not a complete store ---------------
def test_out_is_the_source(src, capsys):
    before = tree(src)
    assert "output is the source dataset" in run(src, src, capsys, "--overwrite")
    assert tree(src) == before


def test_out_is_a_parent_of_the_source(src, capsys):
    parent = src.parent
    before = tree(parent)
    assert f"output contains the source dataset {src}" in run(src, parent, capsys, "--overwrite")
    assert tree(parent) == before


def test_out_inside_the_source(src, capsys):
    before = tree(src)
    assert "lies inside the source dataset" in run(src, src / "imagesTr", capsys, "--overwrite")
    assert "lies inside the source dataset" in run(src, src / "new.zarr", capsys)
    assert tree(src) == before


def test_out_is_a_symlink_to_the_source(src, tmp_path, capsys):
    link = tmp_path / "link.zarr"
    link.symlink_to(src)
    before = tree(src)
    assert "output is the source dataset" in run(src, link, capsys, "--overwrite")
    assert tree(src) == before and link.is_symlink()


def _not_a_store(kind: str, path: Path) -> None:
    if kind == "file":
        path.write_text("my notes")
    elif kind == "folder":
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "thesis.tex").write_text("precious")
    elif kind == "half-written store":
        import zarr

        zarr.open_group(str(path), mode="w").create_group("volumes")
    elif kind == "zarr store of someone else":
        import zarr

        zarr.open_group(str(path), mode="w").attrs["format"] = "theirs"


@pytest.mark.parametrize("kind", ["file", "folder", "half-written store", "zarr store of someone else"])
def test_overwrite_only_replaces_a_complete_pscv_store(src, tmp_path, kind, capsys):
    out = tmp_path / "o.zarr"
    _not_a_store(kind, out)
    before = tree(tmp_path / "data"), tree(out) if out.is_dir() else out.read_bytes()
    assert "already exists; pass --overwrite" in run(src, out, capsys)
    assert "is not a complete pscv store" in run(src, out, capsys, "--overwrite")
    assert (tree(tmp_path / "data"), tree(out) if out.is_dir() else out.read_bytes()) == before
    assert leftovers(tmp_path, "o.zarr") == []


def test_overwrite_replaces_a_store_of_an_older_version(src, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    run(src, out, capsys, "--cases", "case0", rc=0)
    doc = json.loads((out / "zarr.json").read_text())
    doc["attributes"]["pscv_store"]["version"] = 1  # what a store of pscv-dist 0.1 says
    (out / "zarr.json").write_text(json.dumps(doc))
    run(src, out, capsys, "--overwrite", rc=0)
    assert SliceStore(str(out)).cases == ["case0", "case1"]
    assert leftovers(tmp_path, "o.zarr") == []


# --- 2. URL outputs follow the same rules -----------------------------------------------------------
@pytest.mark.parametrize("scheme", ["file", "local"])
def test_local_urls_follow_the_local_rules(src, tmp_path, scheme, capsys):
    out = tmp_path / "o.zarr"
    _not_a_store("folder", out)
    before = tree(out)
    url = f"{scheme}://{out}"
    assert "already exists; pass --overwrite" in run(src, url, capsys)
    assert "is not a complete pscv store" in run(src, url, capsys, "--overwrite")
    assert tree(out) == before
    (out / "sub" / "thesis.tex").unlink()
    (out / "sub").rmdir()
    out.rmdir()
    run(src, url, capsys, "--cases", "case0", rc=0)
    run(src, url, capsys, "--overwrite", rc=0)
    assert SliceStore(url).cases == ["case0", "case1"] and leftovers(tmp_path, "o.zarr") == []


@pytest.fixture
def memory_url(request):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/pscv-publish/{request.node.name.replace('[', '_').replace(']', '')}"
    yield fs, root, f"memory://{root}/s.zarr"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_url_exists_refused_and_replaced_only_when_complete(src, memory_url, capsys):
    fs, root, url = memory_url
    run(src, url, capsys, "--cases", "case0", rc=0)
    old_files = sorted(fs.find(f"{root}/s.zarr"))
    assert "already exists; pass --overwrite" in run(src, url, capsys)
    assert sorted(fs.find(f"{root}/s.zarr")) == old_files and SliceStore(url).cases == ["case0"]

    bad = write_nifti_dataset(src.parent / "bad", n=2)  # conversion fails: the old store must survive
    img, _ = blob_volume(np.random.default_rng(0))
    img[1, 1, 1] = np.nan
    save_nifti(bad / "imagesTr" / "case1_0000.nii.gz", img)
    assert "NaN" in run(bad, url, capsys, "--overwrite")
    assert SliceStore(url).cases == ["case0"] and SliceStore(url).verify() == []

    run(src, url, capsys, "--overwrite", "--cases", "case1", rc=0)
    store = SliceStore(url)
    assert store.cases == ["case1"] and store.verify() == []
    assert not fs.exists(f"{root}/s.zarr/volumes/case0"), "files of the old store left behind"
    assert [p for p in fs.ls(root, detail=False) if ".partial" in p] == [], "staging prefix left behind"


def test_memory_url_that_is_not_a_store_is_never_deleted(src, memory_url, capsys):
    fs, root, url = memory_url
    fs.pipe(f"{root}/s.zarr/results.csv", b"precious")
    assert "already exists" in run(src, url, capsys)
    assert "is not a complete pscv store" in run(src, url, capsys, "--overwrite")
    assert fs.cat(f"{root}/s.zarr/results.csv") == b"precious"


def test_unknown_protocol_is_refused_before_converting(src, tmp_path, capsys):
    img, _ = blob_volume(np.random.default_rng(0))
    img[1, 1, 1] = np.nan  # converting would fail on this case: the protocol must be refused first
    save_nifti(src / "imagesTr" / "case1_0000.nii.gz", img)
    err = run(src, "foo://x", capsys)
    assert "foo://x: unknown protocol 'foo'" in err and "NaN" not in err


# --- 3. one run per OUT; unique staging; only provably dead leftovers are removed ----------------------
def test_a_live_lock_refuses_and_a_dead_one_does_not_block(src, tmp_path, capsys, hold_lock):
    out = tmp_path / "o.zarr"
    staging = tmp_path / ".o.zarr.partial-4194000-0123abcd"  # looks like a dead run's, but the lock is live
    (staging / "volumes").mkdir(parents=True)
    holder = hold_lock(tmp_path / ".o.zarr.lock")
    try:
        assert f"another `pscv prepare` (pid {holder.pid}) is writing" in run(src, out, capsys)
        assert staging.exists(), "the staging folder of a live run was deleted"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run(src, out, capsys, rc=0)  # the holder died: its lock is gone with it, its leftovers too
    assert not staging.exists() and len(SliceStore(str(out)).cases) == 2
    assert leftovers(tmp_path, "o.zarr") == []


def test_only_our_leftovers_are_removed(src, tmp_path, capsys):
    ours = tmp_path / ".o.zarr.partial-4194001-deadbeef"
    theirs = [tmp_path / ".o.zarr.partial-mine", tmp_path / ".o.zarr.partial-12-DEADBEEF",
              tmp_path / ".other.zarr.partial-4194001-deadbeef"]
    for folder in [ours, *theirs]:
        folder.mkdir()
        (folder / "keep.txt").write_text("x")
    run(src, tmp_path / "o.zarr", capsys, rc=0)
    assert not ours.exists() and all((f / "keep.txt").exists() for f in theirs)


def test_a_store_moved_aside_by_a_killed_swap_is_restored(src, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    run(src, out, capsys, "--cases", "case0", rc=0)
    aside = tmp_path / ".o.zarr.old-4194002-0badf00d"
    out.rename(aside)  # what a run killed between its two renames leaves
    assert "already exists" in run(src, out, capsys)
    assert SliceStore(str(out)).cases == ["case0"] and not aside.exists()


def test_staging_name_is_unique_per_run(src, tmp_path):
    from pscv_dist.data.publish import output_target

    a, b = output_target(str(tmp_path / "o.zarr")), output_target(str(tmp_path / "o.zarr"))
    sa = a.claim(str(src), False)
    try:
        assert sa.name.startswith(f".o.zarr.partial-{os.getpid()}-")
        with pytest.raises(ValueError, match="another `pscv prepare`"):
            b.claim(str(src), False)
    finally:
        a.release()
    sb = b.claim(str(src), False)
    b.release()
    assert sa != sb


# --- 3 and 4 with real `pscv prepare` processes -------------------------------------------------------
@pytest.fixture(scope="module")
def slow_src(tmp_path_factory) -> Path:
    """Large enough that a 2-worker conversion takes several seconds on 2 CPU cores."""
    from pscv_dist.data.synthetic import write_phantoms

    return write_phantoms(tmp_path_factory.mktemp("slow"), 6, seed=0, shape=(24, 160, 160))


def _cli(src: Path, out: Path, *extra) -> subprocess.Popen:
    """``pscv prepare`` in its own process; its output goes to a file (workers inherit it, and a
    pipe would keep the test waiting on any worker that outlives its parent)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = open(out.with_name("prepare.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "pscv_dist.cli", "prepare", str(src), str(out), "--layout",
                             "nifti", "--size", "128", *extra], cwd=ROOT, env=env, stdout=log, stderr=log)
    log.close()
    return proc


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_second_concurrent_run_is_refused_and_the_first_completes(slow_src, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    first = _cli(slow_src, out)
    try:
        staging = _wait_for(lambda: list(tmp_path.glob(".o.zarr.partial-*")), 60, "the first run's staging")
        err = run(slow_src, out, capsys)
        assert f"another `pscv prepare` (pid {first.pid} on {socket.gethostname()}) is writing" in err
        assert all(s.exists() for s in staging), "the second run deleted the first run's work"
        assert first.wait(timeout=120) == 0, (tmp_path / "prepare.log").read_text()
    finally:
        first.kill()
    assert len(SliceStore(str(out)).cases) == 6 and leftovers(tmp_path, "o.zarr") == []


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except ImportError:  # /proc: children of every thread, recursively
        found, todo = [], [pid]
        while todo:
            p = todo.pop()
            for task in Path(f"/proc/{p}/task").glob("*"):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
        return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in ("Z", "X")  # a zombie has stopped running; only its exit status is left


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_prepare_takes_its_workers_with_it(slow_src, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    parent = _cli(slow_src, out, "--workers", "2")

    def workers():
        kids = _descendants(parent.pid)
        spawned = [k for k in kids if "spawn_main" in _cmdline(k)]
        return kids if len(spawned) >= 2 else None

    try:
        kids = _wait_for(workers, 60, "two pool workers")
        assert parent.poll() is None, "the conversion finished before it could be killed; use more data"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    try:
        _wait_for(lambda: not any(_alive(k) for k in kids), 5, "the workers to die with their parent")
    finally:
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
    assert list(tmp_path.glob(".o.zarr.partial-*")), "expected the killed run's staging folder"
    run(slow_src, out, capsys, "--cases", "phantom_000", rc=0)  # not blocked; the dead run's work removed
    assert SliceStore(str(out)).cases == ["phantom_000"] and leftovers(tmp_path, "o.zarr") == []
