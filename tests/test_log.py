"""deploykit.log: third-party stderr and root-logger lines are caught and kept at DEBUG; CLI levels."""

from __future__ import annotations

import logging
import os

import pytest

from deploykit.log import cli_logging, progress, quiet_native


def test_quiet_native_catches_fd2_and_root_logger_lines_and_logs_them_at_debug(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="deploykit.native")
    with quiet_native():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")  # what C++ code does
        logging.warning("Please consider to run pre-processing before quantization.")  # what onnxruntime does
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records if r.name == "deploykit.native"] == [
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        "root: Please consider to run pre-processing before quantization.",
    ]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_quiet_native_restores_stderr_and_the_root_logger_after_an_exception(capfd):
    handlers = list(logging.root.handlers)
    with pytest.raises(ValueError), quiet_native():
        raise ValueError("boom")
    assert logging.root.handlers == handlers
    os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"


def test_nested_blocks_are_one_block(caplog):
    caplog.set_level(logging.DEBUG, logger="deploykit.native")
    with quiet_native():
        with quiet_native():
            os.write(2, b"inner\n")
        os.write(2, b"outer\n")
    assert [r.getMessage() for r in caplog.records if r.name == "deploykit.native"] == ["inner", "outer"]


@pytest.mark.parametrize(
    "verbose, quiet, shown", [(False, True, set()), (False, False, {"progress"}), (True, False, {"progress", "native"})]
)
def test_cli_levels(verbose, quiet, shown, capsys):
    logger = logging.getLogger("deploykit")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with cli_logging(verbose=verbose, quiet=quiet):
        progress("step 1/2: fold")
        with quiet_native():
            os.write(2, b"I0000 grappler\n")
        logging.getLogger("deploykit.export").warning("a deploykit warning")
    err = capsys.readouterr().err
    assert ("] step 1/2: fold" in err) is ("progress" in shown)
    assert ("] deploykit.native: I0000 grappler" in err) is ("native" in shown)
    assert "] warning: a deploykit warning" in err  # warnings show at every level
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
