"""fin3r.io.atomic_write: all-or-nothing replacement, no temporary left behind, ordinary file modes."""

import os
import stat

import pytest

from fin3r.io import atomic_write, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "ckpt.txt"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.txt"
    write_text_atomic(path, "good")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.txt"]


def test_new_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
        assert _mode(path) == 0o644
        os.umask(0o027)
        assert _mode(write_text_atomic(tmp_path / "b.txt", "x")) == 0o640
    finally:
        os.umask(old)


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x")
    os.chmod(path, 0o640)
    write_text_atomic(path, "y")
    assert _mode(path) == 0o640 and path.read_text() == "y"


def test_write_csv_atomic_fills_missing_columns(tmp_path):
    import csv

    from fin3r.io import write_csv_atomic

    path = write_csv_atomic(tmp_path / "r.csv", ["a", "b"], [{"a": 1, "b": 2}, {"a": 3}])
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["a", "b"], ["1", "2"], ["3", ""]]
