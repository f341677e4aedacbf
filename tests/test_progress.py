"""deploykit.progress: a heartbeat line when a command is silent, bars only on a terminal, short lines."""

from __future__ import annotations

import io
import logging
import time

from deploykit import progress
from deploykit.log import MAX_LINE, cli_logging, shorten


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_silent_command_gets_a_heartbeat_line_with_the_task_and_time_left(capsys):
    with cli_logging(), progress.live(io.StringIO(), period=0.3):
        progress.step("export onnx float32")
        time.sleep(0.8)
        with progress.task("sensitivity scan", 10, "layers") as task:
            task.update(5)
            time.sleep(0.8)
    err = capsys.readouterr().err
    assert "... still export onnx float32" in err
    assert "... sensitivity scan: 5/10 layers, ~" in err and "left" in err


def test_no_bar_unless_the_stream_is_a_terminal():
    plain, terminal = io.StringIO(), _Terminal()
    with progress.live(plain, period=60), progress.task("fine-tuning", 4, "batches") as task:
        assert task.bar is None
        task.update()
    with progress.live(terminal, period=60), progress.task("fine-tuning", 4, "batches") as task:
        assert task.bar is not None
        task.update(4)
    assert plain.getvalue() == "" and "fine-tuning" in terminal.getvalue()
    assert not progress.enabled()  # the API draws nothing
    with progress.task("x", 3) as task:
        assert task.bar is None


def test_progress_lines_are_cut_to_a_readable_width(capsys):
    with cli_logging():
        logging.getLogger("deploykit.progress").info("sensitivity " + "; layer 0.0/0.1/0.2" * 300)
    line = capsys.readouterr().err.strip()
    assert len(line) <= MAX_LINE and line.endswith(" ...")
    assert shorten("short", 80) == "short"
