"""files.write_atomic: whole files only, and the permissions a plain open() would give."""
import os
import stat

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
