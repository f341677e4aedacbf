"""CLI smoke tests: deploykit prune / sparsify-l1 / compact, run in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test reads the trained_model fixture (trains a model)


@pytest.fixture(scope="module")
def model_file(trained_model, tmp_path_factory):
    from deploykit.io.models import save_model

    return str(save_model(trained_model, tmp_path_factory.mktemp("cli") / "model.keras"))


def test_prune_cli_with_blocks_progress_and_report(model_file, tmp_path, cli):
    from deploykit.io.models import load_model

    out, rep = tmp_path / "pruned.keras", tmp_path / "report.json"
    proc = cli(
        "prune",
        model_file,
        "--data",
        "digits",
        "--sparsity",
        "0.5",
        "--block",
        "1x4",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--report",
        str(rep),
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/2" in proc.stderr and "epoch 2/2" in proc.stderr  # one line per epoch
    model = load_model(out)
    report = json.loads(rep.read_text())
    assert report["method"] == "prune" and report["config"]["block_size"] == [1, 4]
    for layer in report["layers"]:
        kernel = model.get_layer(layer["name"]).get_weights()[0]
        if layer["changed"]:
            blocks = kernel.reshape(kernel.shape[0], -1, 4)
            assert set(np.count_nonzero(blocks, axis=-1).ravel()) <= {0, 4}
            assert abs(np.mean(kernel == 0) - 0.5) <= 0.01
    assert "model sparsity" in proc.stdout


def test_sparsify_l1_and_compact_cli(model_file, tmp_path, cli):
    from deploykit.io.models import load_model

    sparse = tmp_path / "l1.keras"
    proc = cli(
        "sparsify-l1",
        model_file,
        "--data",
        "digits",
        "--l1",
        "1e-3",
        "--threshold",
        "0.05",
        "--epochs",
        "1",
        "--out",
        str(sparse),
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stderr and "before zeroing" in proc.stdout
    kernel = [l for l in load_model(sparse).layers if type(l).__name__ == "Dense"][0].get_weights()[0]
    assert np.all((kernel == 0) | (np.abs(kernel) >= 0.05)) and (kernel == 0).any()

    small = tmp_path / "small.keras"
    proc = cli("compact", str(sparse), "--data", "digits", "--out", str(small))
    assert proc.returncode == 0, proc.stderr
    assert "max |output difference|" in proc.stdout and small.exists()


def test_cli_bad_input_is_one_line_and_writes_nothing(model_file, tmp_path, cli):
    out = tmp_path / "never.keras"
    proc = cli("prune", model_file, "--sparsity", "1.0", "--out", str(out))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "deploykit prune: error: target_sparsity must be a number in [0, 1), got 1.0"
    )

    data = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(200, 20)).astype("float32"), y=rng.integers(0, 10, 200))
    proc = cli("prune", model_file, "--data", str(data), "--out", str(out))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("deploykit prune: error: data 'wide.npz' has inputs of shape (20,)") and "(64,)" in last
    assert list(tmp_path.iterdir()) == [data]  # nothing written, not even a temporary file


def test_prune_structured_cli_halves_the_hidden_layers_and_reports_macs(model_file, tmp_path, cli):
    from deploykit.io.models import load_model

    out, rep = tmp_path / "narrow.keras", tmp_path / "report.json"
    proc = cli(
        "prune-structured",
        model_file,
        "--data",
        "digits",
        "--fraction",
        "0.5",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--report",
        str(rep),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(rep.read_text())
    widths = [layer.get_weights()[0].shape[-1] for layer in load_model(out).layers if type(layer).__name__ == "Dense"]
    assert widths == [layer["units_after"] for layer in report["layers"]] + [10]
    assert report["macs_after"] < report["macs_before"] and "fewer" in proc.stdout
    bad = cli(
        "prune-structured",
        model_file,
        "--data",
        "digits",
        "--layer-fraction",
        "dense",
        "--out",
        str(tmp_path / "b.keras"),
    )
    assert bad.returncode == 2 and "--layer-fraction 'dense'" in bad.stderr and not (tmp_path / "b.keras").exists()
