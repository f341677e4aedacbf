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


# --- concurrent runs and leftovers (issue 13 items 8 and 9) ---


def test_a_folder_that_appeared_meanwhile_is_kept_and_the_result_put_beside(tmp_path):
    from deploykit.errors import OutputExistsError

    out = tmp_path / "artifacts"
    with pytest.raises(OutputExistsError, match="appeared while this run was working") as info:
        with atomic_dir(out) as staging:
            (staging / "second.onnx").write_text("second")
            out.mkdir()  # another run finished first
            (out / "first.onnx").write_text("first")
    assert _names(out) == ["first.onnx"]
    kept = [p for p in tmp_path.iterdir() if p != out]
    assert len(kept) == 1 and kept[0].name.startswith("artifacts.") and _names(kept[0]) == ["second.onnx"]
    assert str(kept[0]) in str(info.value)


def _two_runs(out, force: bool):
    """Two threads in atomic_dir(out) at once: both pass the start check, the first finishes first."""
    import threading

    both_inside, first_done = threading.Barrier(2), threading.Event()
    outcome = {}

    def run(name):
        try:
            with atomic_dir(out, force=force) as staging:
                (staging / f"{name}.onnx").write_text(name)
                both_inside.wait(timeout=10)
                if name == "second":
                    first_done.wait(timeout=10)
            outcome[name] = "ok"
        except Exception as exc:  # noqa: BLE001  (the test inspects it)
            outcome[name] = exc
        finally:
            if name == "first":
                first_done.set()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return outcome


def test_two_concurrent_runs_without_force_never_delete_the_first(tmp_path):
    from deploykit.errors import OutputExistsError

    out = tmp_path / "artifacts"
    outcome = _two_runs(out, force=False)
    assert outcome["first"] == "ok" and isinstance(outcome["second"], OutputExistsError), outcome
    assert _names(out) == ["first.onnx"]
    kept = [p for p in tmp_path.iterdir() if p != out]
    assert [_names(p) for p in kept] == [["second.onnx"]] and str(kept[0]) in str(outcome["second"])


def test_two_concurrent_runs_with_force_leave_the_last_one(tmp_path):
    out = tmp_path / "artifacts"
    assert _two_runs(out, force=True) == {"first": "ok", "second": "ok"}
    assert _names(out) == ["second.onnx"] and _names(tmp_path) == ["artifacts"]


def test_force_swap_never_leaves_the_target_missing(tmp_path):
    import threading

    from deploykit.atomic import _exchange

    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    if not _exchange(probe_a, probe_b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the documented two-step fallback is used")
    out = tmp_path / "artifacts"
    with atomic_dir(out) as staging:
        (staging / "v.txt").write_text("0")
    missing, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if not out.is_dir():
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(1, 101):
            with atomic_dir(out, force=True) as staging:
                (staging / "v.txt").write_text(str(i))
    finally:
        stop.set()
        watcher.join()
    assert missing == [] and (out / "v.txt").read_text() == "100"
    assert sorted(_names(tmp_path)) == ["a", "artifacts", "b"]


def test_the_staging_folder_records_its_owner_and_the_output_does_not(tmp_path):
    import json
    import os

    from deploykit.atomic import OWNER_FILE

    with atomic_dir(tmp_path / "out") as staging:
        owner = json.loads((staging / OWNER_FILE).read_text())
        assert owner["pid"] == os.getpid() and staging.name.startswith(".out.") and staging.name.endswith(".tmp")
    assert _names(tmp_path / "out") == []


def test_leftovers_of_killed_runs_are_cleaned_and_reported(tmp_path, caplog):
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "artifacts"
    script = (
        "import sys, time\nfrom deploykit.atomic import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as s:\n    (s / 'half.onnx').write_text('x')\n"
        "    print(s, flush=True)\n    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    leftover = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert leftover.is_dir() and leftover.parent == tmp_path
    from deploykit.atomic import OWNER_FILE, _me

    live = tmp_path / ".artifacts.0123456789ab.tmp"  # a run of this process, still going
    live.mkdir()
    (live / OWNER_FILE).write_text(json.dumps(_me()))
    with atomic_dir(tmp_path / "artifacts.json.d"):  # another output beside: not its leftovers
        pass
    assert leftover.is_dir()
    with caplog.at_level("WARNING", logger="deploykit.atomic"):
        with atomic_dir(out) as staging:
            (staging / "a.onnx").write_text("a")
    assert not leftover.exists() and live.is_dir()
    assert f"removed {leftover}, left by an interrupted deploykit run (pid {proc.pid}" in caplog.text


def test_a_live_owner_is_never_cleaned(tmp_path):
    import json
    import os

    from deploykit.atomic import OWNER_FILE, _me, clean_leftovers

    mine = tmp_path / ".artifacts.aaaaaaaaaaaa.tmp"
    mine.mkdir()
    (mine / OWNER_FILE).write_text(json.dumps(_me()))
    reused = tmp_path / ".artifacts.bbbbbbbbbbbb.tmp"  # this pid, but another process's start time: pid reuse
    reused.mkdir()
    (reused / OWNER_FILE).write_text(json.dumps({**_me(), "start": "1"}))
    no_record = tmp_path / ".artifacts.cccccccccccc.tmp"
    no_record.mkdir()
    removed = clean_leftovers(tmp_path / "artifacts")
    assert mine.is_dir() and no_record.is_dir()
    assert removed == ([reused] if _me()["start"] else [])
    assert os.getpid() == _me()["pid"]


def test_force_without_rename_exchange_uses_the_two_step_fallback(tmp_path, monkeypatch):
    import deploykit.atomic as atomic

    monkeypatch.setattr(atomic, "_renameat2", lambda: None)  # as on a system without renameat2
    out = tmp_path / "artifacts"
    for i in range(2):
        with atomic_dir(out, force=True) as staging:
            (staging / f"{i}.onnx").write_text(str(i))
    assert _names(out) == ["1.onnx"] and _names(tmp_path) == ["artifacts"]
