"""What the CLI prints: only deploykit's own lines, at the level ``--quiet`` / ``--verbose`` asks for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from deploykit.cli.main import main

PROGRESS_LINE = re.compile(r"^\[ *\d+\.\ds\] +\S")


@pytest.mark.slow
def test_optimize_prints_only_deploykit_lines(tmp_path):
    """The shipped model through every kind of artifact whose runtime or converter prints natively:
    onnxruntime's quantizer ("consider pre-processing"), tf2onnx/grappler (I0000), the TFLite
    converter (fully_quantize), LiteRT (XNNPACK delegate). TF_CPP_MIN_LOG_LEVEL=0 makes TensorFlow as
    talkative as it gets, so the silence does not depend on the environment."""
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploykit.cli.main",
            "optimize",
            "--no-sparsity",
            "--formats",
            "onnx,tflite",
            "--quantize",
            "float32,int8-dynamic,int8-full",
            "--samples",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    foreign = [line for line in done.stderr.splitlines() if not PROGRESS_LINE.match(line)]
    assert not foreign, "stderr lines that are not deploykit's progress:\n" + "\n".join(foreign)
    assert "step 1/" in done.stderr
    artifacts = [a["file"] for a in json.loads((out / "report.json").read_text())["artifacts"]]
    assert {"model_int8-dynamic.onnx", "model_int8-full.tflite", "model_mc.onnx"} <= set(artifacts)
    header, rule, *rows, blank, summary = done.stdout.splitlines()
    assert header.startswith("artifact ") and set(rule) <= {"-", " "} and blank == ""
    assert [row.split()[0] for row in rows] == artifacts  # the table, one row per artifact, nothing between
    verdicts = [a["verdict"] for a in json.loads((out / "report.json").read_text())["artifacts"]]
    shipped, rejected = sum(v in ("pass", "not validated") for v in verdicts), verdicts.count("rejected")
    assert summary.startswith(f"{shipped} artifacts shipped, {rejected} rejected; report.md")  # 5 MC samples may miss


@pytest.mark.parametrize(
    "flag, progress, native", [("--quiet", False, False), (None, True, False), ("--verbose", True, True)]
)
def test_levels_of_the_cli(flag, progress, native, tmp_path, capsys):
    """--quiet: no progress; default: progress; --verbose: also the third-party lines deploykit hid.
    ``fold --out x.h5`` is the case: tf_keras warns about compiled metrics while saving."""
    from deploykit.cli.common import DEFAULT_MODEL

    code = main(["fold", str(DEFAULT_MODEL), "--out", str(tmp_path / "folded.h5"), *([flag] if flag else [])])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "folded" in out  # the result is printed whatever the level
    assert ("] folding" in err) is progress
    assert ("deploykit.native: tensorflow: Compiled the loaded model" in err) is native
    assert all(PROGRESS_LINE.match(line) for line in err.splitlines())
