"""``--help`` of every command: fast (no TensorFlow, checked in a fresh process) and listing the shared options."""

from __future__ import annotations

import json
import subprocess
import sys

HELP_OF_EVERY_COMMAND = """
import contextlib, io, json, sys
from deploykit.cli.main import build_parser, main

commands = sorted(build_parser()._subparsers._group_actions[0].choices)
texts = {}
for command in [None, *commands]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"] if command else ["--help"])
    texts[command or ""] = out.getvalue()
heavy = ("tensorflow", "tf_keras", "keras", "tf2onnx", "onnxruntime", "tensorflow_model_optimization",
         "deploykit.backend")
print(json.dumps({"heavy": sorted(m for m in heavy if m in sys.modules), "texts": texts}))
"""


def test_help_of_every_command_imports_no_tensorflow_and_lists_verbose_and_quiet():
    done = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    texts = result["texts"]
    assert {"train", "fold", "export", "mc", "optimize", "serve"} <= texts.keys()
    for command, text in texts.items():
        if command:
            assert "--verbose" in text and "--quiet" in text, command
