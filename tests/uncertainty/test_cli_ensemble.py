"""``deploykit ensemble`` in-process: member files in, one validated ensemble ONNX and its size report out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.cli.main import main
from tests.uncertainty.support import session


def _member_files(folder, digits, dropout=0.2):
    from deploykit.backend import set_seed
    from deploykit.io import save_model
    from tests.helpers import build_dense

    files = []
    for seed in (1, 2):
        set_seed(seed)
        model = build_dense(hidden=(32,), data=digits, bn=False, dropout=dropout)
        model.compile(optimizer="nadam", loss="sparse_categorical_crossentropy")
        model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
        files.append(folder / f"m{seed}.keras")
        save_model(model, files[-1])
    return files


@pytest.mark.slow
def test_two_member_files_become_one_int8_ensemble(tmp_path, digits, capsys):
    files = _member_files(tmp_path, digits)
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


@pytest.mark.slow
def test_mc_dropout_inside_each_member(tmp_path, digits, capsys):
    """--mc-samples T: each member file is an int8 MC Dropout model outputting its T samples; the ensemble
    reduces all K*T, and its mean is the average of every member's sample probabilities."""
    files = _member_files(tmp_path, digits, dropout=0.2)
    out = tmp_path / "out"
    assert main(["ensemble", *map(str, files), "--out", str(out), "--tune-epochs", "2", "--sparsity", "0.5",
                 "--mc-samples", "8"]) == 0
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["mc_samples"] == 8 and summary["test"]["ensemble"]["accuracy"] > 0.8
    assert summary["test"]["member0_int8"]["accuracy"] > 0.8  # the int8 MC member was prepared like every int8 export
    member = session(out / "members" / "member0.onnx")
    samples = member.run(["sample_probabilities"], {"input": digits.x_test[:5]})[0]
    assert samples.shape == (8, 5, digits.num_classes) and samples.std(0).max() > 0
    assert any(n.op_type == "MatMulInteger" or n.op_type == "DynamicQuantizeLinear"
               for n in __import__("onnx").load(str(out / "members" / "member0.onnx")).graph.node)
    outputs = session(out / "ensemble.onnx").run(["mean", "std"], {"input": digits.x_test[:5]})
    assert outputs[0].shape == (5, digits.num_classes) and (outputs[1] > 0).any()
    assert "MC Dropout inside each member: 8 samples each, 16 reduced per call" in (out / "ensemble.md").read_text()


def test_one_model_file_is_a_usage_error(tmp_path, capsys):
    assert main(["ensemble", "only.keras", "--out", str(tmp_path / "o")]) == 2
    assert "at least 2 model files" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
