"""files.write_atomic: whole files only, and the permissions a plain open() would give."""
import os
import stat

import pytest

from pscv_dist.files import write_atomic, write_json_atomic


def test_new_files_get_the_umask_permissions_and_replaced_ones_keep_theirs(tmp_path):
    umask = os.umask(0o027)
    try:
        import importlib

        import pscv_dist.files as files

        importlib.reload(files)  # the module reads the umask once, at import
        new = files.write_atomic(tmp_path / "a.txt", b"x")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        os.chmod(new, 0o604)
        files.write_atomic(new, b"y")
        assert stat.S_IMODE(new.stat().st_mode) == 0o604 and new.read_bytes() == b"y"
    finally:
        os.umask(umask)
        importlib.reload(files)
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


def test_json_is_written_whole(tmp_path):
    path = write_json_atomic({"a": 1}, tmp_path / "r.json")
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    write_atomic(tmp_path / "b", b"")
    assert (tmp_path / "b").read_bytes() == b""


def test_absolute_local_makes_local_paths_absolute_and_leaves_urls(tmp_path, monkeypatch):
    from pscv_dist.files import absolute_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute_local("a/b.zarr") == str(tmp_path / "a" / "b.zarr")
    assert absolute_local("~/s.zarr") == str(tmp_path / "home" / "s.zarr")
    assert absolute_local("/abs/s.zarr") == "/abs/s.zarr"
    for url in ("s3://bucket/s.zarr", "memory://s.zarr", "file:///x/s.zarr", ""):
        assert absolute_local(url) == url


def test_a_file_system_without_flock_is_refused_in_one_line(tmp_path, monkeypatch):
    """Some network file systems answer flock with ENOLCK: say which file, not a bare errno."""
    import errno
    import fcntl

    from pscv_dist.errors import OutputError
    from pscv_dist.files import RunLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # the file system, not our code, is what is replaced
    with pytest.raises(OutputError, match=r"x\.lock: cannot lock it for the study folder \(.*\); use a folder"):
        RunLock(tmp_path / "x.lock", "the study folder", "pscv study run").acquire()
