"""``deploykit ensemble`` in-process: member files in, one validated ensemble ONNX and its size report out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.cli.main import main
from tests.uncertainty.support import session


@pytest.mark.slow
def test_two_member_files_become_one_int8_ensemble(tmp_path, digits, capsys):
    from deploykit.backend import set_seed
    from deploykit.io import save_model
    from tests.helpers import build_dense

    files = []
    for seed in (1, 2):
        set_seed(seed)
        model = build_dense(hidden=(32,), data=digits, bn=False)
        model.compile(optimizer="nadam", loss="sparse_categorical_crossentropy")
        model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
        files.append(tmp_path / f"m{seed}.keras")
        save_model(model, files[-1])
    out = tmp_path / "out"
    assert main(["ensemble", *map(str, files), "--out", str(out), "--tune-epochs", "2", "--sparsity", "0.5"]) == 0
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["sizes"]["members"] == 2 and summary["test"]["ensemble"]["accuracy"] > 0.8
    outputs = {o.name for o in session(out / "ensemble.onnx").get_outputs()}
    assert {"mean", "predictive_entropy", "mutual_information", "predicted_class"} <= outputs
    mean = session(out / "ensemble.onnx").run(["mean"], {"input": digits.x_test[:5]})[0]
    members = np.mean([session(out / "members" / f"member{k}.onnx").run(None, {"input": digits.x_test[:5]})[0] for k in (0, 1)], 0)
    np.testing.assert_allclose(mean, members, atol=1e-6)
    assert "gzip" in (out / "ensemble.md").read_text() and "wrote" in capsys.readouterr().out


def test_one_model_file_is_a_usage_error(tmp_path, capsys):
    assert main(["ensemble", "only.keras", "--out", str(tmp_path / "o")]) == 2
    assert "at least 2 model files" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
