"""``mc_bundle`` through ``deploykit mc`` (in-process): temperature on/off, the abstain output, the OOD report.

Real onnxruntime sessions on the written files; the tiny untrained BN model of conftest (seeded draws, so a
fresh session repeats the draws the command made).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.core.contract import ABSTAIN_OUTPUT, SELECTIVE_KEY, TEMPERATURE_KEY

PNG = b"\x89PNG\r\n\x1a\n"
# every test reads two whole `deploykit mc` runs (export, temperature, OOD, figures): the fast loop keeps
# tests/uncertainty/test_cli_mc.py's default run
pytestmark = pytest.mark.slow
SEED = ["--samples", "8", "--mc-seed", "3"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, mc_bn_model):
    from deploykit.io.models import save_model

    return save_model(mc_bn_model, tmp_path_factory.mktemp("bundle") / "model.keras")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_file):
    """``deploykit mc`` with the temperature (default) plus a coverage target and OOD data, and without all three."""
    from deploykit.cli.main import main

    root = tmp_path_factory.mktemp("runs")
    ood = root / "ood.npy"
    np.save(ood, np.random.default_rng(0).uniform(0, 16, (60, 64)).astype(np.float32))
    flags = {"off": ["--no-temperature"], "on": ["--target-coverage", "0.8", "--ood-data", str(ood)]}
    for name, extra in flags.items():
        assert main(["mc", str(model_file), "--data", "digits", *SEED, *extra, "--out", str(root / name)]) == 0
    return root


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _nll(y, p) -> float:
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def _props(path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_temperature_is_in_the_graph_and_its_metadata_and_improves_validation_nll(runs, digits):
    import onnx

    on, off = runs / "on" / "model_mc.onnx", runs / "off" / "model_mc.onnx"
    fit = json.loads(_props(on)[TEMPERATURE_KEY])
    assert TEMPERATURE_KEY not in _props(off) and fit["fitted_on"] == "validation split"
    assert fit["placement"] in ("per_sample", "mean") and fit["nll_after"] < fit["nll_before"]
    divs = lambda p: sum(n.op_type == "Div" for n in onnx.load(str(p)).graph.node)  # noqa: E731
    assert divs(on) > divs(off)
    # the metadata written by the export survives the temperature edit
    assert (
        json.loads(_props(on)["deploykit.kind"]) == "mc_dropout"
        and json.loads(_props(on)["deploykit.default_samples"]) == 8
    )
    mean_on = _session(on).run(["mean"], {"input": digits.x_val})[0]
    mean_off = _session(off).run(["mean"], {"input": digits.x_val})[0]
    assert not np.allclose(mean_on, mean_off, atol=1e-3)
    assert (mean_on.argmax(1) == mean_off.argmax(1)).mean() > 0.95  # a temperature rescales, it (nearly) never reorders
    assert _nll(digits.y_val, mean_on) <= _nll(digits.y_val, mean_off)


def test_comparison_reports_calibration_before_and_after(runs):
    on = json.loads((runs / "on" / "comparison.json").read_text())["comparison"]
    off = json.loads((runs / "off" / "comparison.json").read_text())["comparison"]
    assert off["temperature"] is None and off["selective"] is None and off["ood"] is None
    t = on["temperature"]
    assert {"nll", "ece", "brier"} <= t["before"].keys() and {"nll", "ece", "brier"} <= t["after"].keys()
    assert t["after"]["nll"] == pytest.approx(on["mc"]["nll"])  # "after" is the shipped model's figure
    assert t["after"]["nll"] < t["before"]["nll"]
    assert on["plots"] == ["reliability.png", "temperature.png", "risk_coverage.png"] and off["plots"] == [
        "reliability.png"
    ]
    assert (runs / "on" / "temperature.png").read_bytes()[:8] == PNG
    text = (runs / "on" / "comparison.md").read_text()
    assert "## Temperature scaling" in text and "| NLL |" in text


def test_selective_threshold_adds_abstain_and_reports_test_coverage(runs, digits):
    path = runs / "on" / "model_mc.onnx"
    report = json.loads((runs / "on" / "comparison.json").read_text())["comparison"]
    chosen, test = report["selective"]["chosen"], report["selective"]["test"]
    props = _props(path)
    stored = json.loads(props[SELECTIVE_KEY])
    assert TEMPERATURE_KEY in props and stored["threshold"] == pytest.approx(chosen["threshold"])
    assert chosen["target"]["target_coverage"] == 0.8 and chosen["coverage"] >= 0.8
    session = _session(path)
    assert ABSTAIN_OUTPUT in [o.name for o in session.get_outputs()]
    abstain, entropy = [], []
    for i in range(0, len(digits.x_test), 256):  # the command's batches, so a fresh seeded session repeats its draws
        a, e = session.run([ABSTAIN_OUTPUT, "predictive_entropy"], {"input": digits.x_test[i : i + 256]})
        abstain.append(a)
        entropy.append(e)
    abstain, entropy = np.concatenate(abstain), np.concatenate(entropy)
    assert abstain.dtype == bool and np.array_equal(abstain, entropy > stored["threshold"])
    assert 1 - abstain.mean() == pytest.approx(test["coverage"], abs=1e-9)
    assert test["count"] == len(digits.x_test) and test["kept"] == int((~abstain).sum())
    assert (runs / "on" / "risk_coverage.png").read_bytes()[:8] == PNG
    assert "## Selective prediction" in (runs / "on" / "comparison.md").read_text()


def test_ood_report_fields(runs):
    report = json.loads((runs / "on" / "comparison.json").read_text())["comparison"]
    rows = {r["measure"]: r for r in report["ood"]}
    assert set(rows) == {"max_prob", "entropy", "mutual_information"}
    for r in rows.values():
        assert 0 <= r["auroc"] <= 1 and 0 <= r["fpr_at_95_tpr"] <= 1
    assert "## Out-of-distribution detection" in (runs / "on" / "comparison.md").read_text()


def test_bad_uncertainty_options_are_one_line_and_write_nothing(tmp_path, model_file, cli):
    out = tmp_path / "out"
    bad = cli("mc", model_file, "--target-accuracy", "1.5", "--out", out)
    assert bad.returncode == 2 and "must be a number in (0, 1]" in bad.stderr
    both = cli("mc", model_file, "--target-accuracy", "0.9", "--target-coverage", "0.5", "--out", out)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    missing = cli("mc", model_file, "--ood-data", tmp_path / "nope.npy", "--out", out)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    np.save(tmp_path / "wide.npy", np.zeros((5, 65), np.float32))
    wide = cli("mc", model_file, "--data", "digits", "--ood-data", tmp_path / "wide.npy", "--out", out)
    assert wide.returncode != 0 and "OOD data must have shape [N, 64]" in wide.stderr
    for done in (bad, both, missing, wide):
        assert len([line for line in done.stderr.splitlines() if "error" in line]) == 1
    assert not out.exists()


def test_load_ood_formats(tmp_path):
    from deploykit.errors import DataError
    from deploykit.uncertainty.ood import load_ood

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "a.npz", x=x, y=np.zeros(3))
    np.savez(tmp_path / "b.npz", x_test=x)
    np.savez(tmp_path / "c.npz", images=x)
    assert np.array_equal(load_ood(tmp_path / "a.npz"), x) and np.array_equal(load_ood(tmp_path / "b.npz"), x)
    with pytest.raises(DataError, match="array named x"):
        load_ood(tmp_path / "c.npz")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"\.npy array or an \.npz"):
        load_ood(tmp_path / "d.csv")
