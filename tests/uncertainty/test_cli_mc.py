"""``deploykit mc``, run in-process."""

from __future__ import annotations

import json

PNG = b"\x89PNG\r\n\x1a\n"


def test_mc_command(tmp_path, mc_bn_model, cli):
    from deploykit.io.models import save_model
    from deploykit.uncertainty import UncertaintyPredictor

    model = save_model(mc_bn_model, tmp_path / "model.keras")
    out = tmp_path / "mc"
    done = cli("mc", str(model), "--data", "digits", "--samples", "8", "--mc-seed", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.json",
        "comparison.md",
        "model_mc.onnx",
        "reliability.png",
        "temperature.png",
    ]
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["export"]["path"] == str(out / "model_mc.onnx") and summary["export"]["config"]["seed"] == 3
    comparison = summary["comparison"]
    assert comparison["count"] == 270 and comparison["samples"] == 8
    assert {"accuracy", "nll", "brier", "ece"} <= comparison["mc"].keys() <= comparison["deterministic"].keys()
    assert [u["measure"] for u in comparison["uncertain"]] == ["entropy", "predictive_entropy", "mutual_information"]
    assert "| accuracy |" in (out / "comparison.md").read_text()
    assert (out / "reliability.png").read_bytes()[:8] == PNG
    assert UncertaintyPredictor(out / "model_mc.onnx").default_samples == 8
    assert "accuracy" in done.stdout

    again = cli("mc", str(model), "--out", str(out))  # an existing folder needs --force
    assert again.returncode == 2 and "--force" in again.stderr


def test_mc_command_refusals(tmp_path, digits, cli):
    from deploykit.io.models import save_model
    from tests.helpers import build_dense

    out = tmp_path / "mc"
    bad = cli("mc", str(tmp_path / "missing.keras"), "--samples", "0", "--out", str(out))
    assert bad.returncode == 2 and "samples must be an integer >= 1" in bad.stderr
    model = save_model(build_dense(dropout=0, data=digits), tmp_path / "plain.keras")
    plain = cli("mc", str(model), "--data", "digits", "--out", str(out))
    assert plain.returncode == 2 and "deploykit train --dropout" in plain.stderr
    assert len([line for line in plain.stderr.splitlines() if line.startswith("deploykit mc: error:")]) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["plain.keras"]


def test_mc_command_on_a_logits_classifier_and_a_regression_target_refused(tmp_path, cli):
    """A logits model through `deploykit mc` (digits has 64 features: a model of that width), and --target-rmse,
    a regression target, refused on classification data before anything is written."""
    from deploykit.backend import keras, set_seed
    from deploykit.io.models import save_model

    set_seed(8)
    logits = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
        ]
    )
    model = save_model(logits, tmp_path / "logits.keras")
    out = tmp_path / "mc"
    done = cli("mc", str(model), "--data", "digits", "--samples", "8", "--mc-seed", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["export"]["output_kind"] == "logits" and summary["export"]["task"] == "classification"
    refused = cli("mc", str(model), "--data", "digits", "--target-rmse", "3", "--out", str(tmp_path / "other"))
    assert refused.returncode == 2 and "target_rmse is a regression target" in refused.stderr
    assert not (tmp_path / "other").exists()
