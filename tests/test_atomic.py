"""deploykit.atomic: a failed write leaves nothing behind and the old output untouched."""

from __future__ import annotations

import pytest

from deploykit.atomic import atomic_dir, atomic_path, write_bytes, write_text
from deploykit.errors import UsageError


class Boom(Exception):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_writes_on_success_and_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "out" / "model.keras") as tmp:
        assert tmp.parent == tmp_path / "out" and tmp.name.endswith(".keras") and not tmp.exists()
        tmp.write_text("new")
    assert (tmp_path / "out" / "model.keras").read_text() == "new"
    assert _names(tmp_path / "out") == ["model.keras"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_atomic_path_failure_leaves_old_file_and_no_temp(tmp_path, error):
    final = tmp_path / "model.keras"
    final.write_text("old")
    with pytest.raises(error):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise error()
    assert final.read_text() == "old"
    assert _names(tmp_path) == ["model.keras"]


def test_atomic_path_failure_with_a_folder_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "saved") as tmp:
            (tmp / "sub").mkdir(parents=True)
            (tmp / "sub" / "f").write_text("x")
            raise Boom()
    assert _names(tmp_path) == []


def test_atomic_path_nothing_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "a.txt"):
            pass
    assert _names(tmp_path) == []


def test_atomic_path_replaces_a_folder_with_a_folder(tmp_path):
    final = tmp_path / "saved"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert _names(final) == ["new"] and _names(tmp_path) == ["saved"]


def test_atomic_path_refuses_a_file_over_a_folder(tmp_path):
    final = tmp_path / "saved"
    final.mkdir()
    (final / "keep").write_text("keep")
    with pytest.raises(UsageError, match="is a folder"):
        with atomic_path(final) as tmp:
            tmp.write_text("file")
    assert _names(final) == ["keep"] and _names(tmp_path) == ["saved"]


def test_atomic_dir_success_and_refusals(tmp_path):
    out = tmp_path / "artifacts"
    with atomic_dir(out) as staging:
        assert staging != out and not out.exists()
        (staging / "a.onnx").write_bytes(b"1")
    assert _names(out) == ["a.onnx"]
    with pytest.raises(UsageError, match="--force"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, force=True) as staging:
        (staging / "b.onnx").write_bytes(b"2")
    assert _names(out) == ["b.onnx"] and _names(tmp_path) == ["artifacts"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        with atomic_dir(tmp_path / "file"):
            pass


def test_atomic_dir_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as staging:
        (staging / "x").write_text("x")
    assert _names(tmp_path / "out") == ["x"]


def test_atomic_dir_failure_leaves_the_old_folder_untouched(tmp_path):
    out = tmp_path / "artifacts"
    out.mkdir()
    (out / "old.onnx").write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_dir(out, force=True) as staging:
            (staging / "new.onnx").write_bytes(b"new")
            raise Boom()
    assert _names(out) == ["old.onnx"] and _names(tmp_path) == ["artifacts"]


def test_write_text_and_bytes(tmp_path):
    assert write_text(tmp_path / "a.json", "{}\n").read_text() == "{}\n"
    assert write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["a.json", "b.bin"]


def test_atomic_dir_honours_the_umask_like_mkdir(tmp_path):
    import stat

    from deploykit.atomic import atomic_dir

    (tmp_path / "plain").mkdir()
    with atomic_dir(tmp_path / "out") as staging:
        (staging / "f.txt").write_text("x")
    mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
