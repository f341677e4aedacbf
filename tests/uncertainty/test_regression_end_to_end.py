"""End to end: a Keras 3 regression MLP with Dropout, trained briefly on the diabetes data, through the MC step
(std scale, 95% interval coverage in the report), then served and read with real HTTP clients."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains a model and starts a server

_TRAIN = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = y.astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(10,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x[:300], y[:300], epochs=60, batch_size=32, verbose=0)
    model.save(sys.argv[1])
    np.savez(sys.argv[2], x=x, y=y)
""")


@pytest.fixture(scope="module")
def keras3_regressor(tmp_path_factory):
    """A Keras 3 ``.keras`` file (trained in its own process: Keras 3, not tf_keras) and the data as an .npz."""
    folder = tmp_path_factory.mktemp("keras3")
    model, data = folder / "regressor.keras", folder / "diabetes.npz"
    subprocess.run([sys.executable, "-c", _TRAIN, str(model), str(data)], check=True, capture_output=True, timeout=600)
    return model, data


def _dataset(npz):
    """The npz as a regression Dataset: the 300 rows the model was trained on, then 71 validation and 71 test rows."""
    from deploykit.core.task import Task
    from deploykit.data.dataset import Dataset

    with np.load(npz) as arrays:
        x, y = arrays["x"], arrays["y"]
    parts = [slice(0, 300), slice(300, 371), slice(371, None)]
    return Dataset("diabetes", *[arr[i] for i in parts for arr in (x, y)], (), task=Task.REGRESSION)


def _serve_and_read(folder, x):
    """``deploykit serve`` on the folder; mean and std of x over v2 (tritonclient) and v1 (httpx)."""
    import httpx
    import tritonclient.http as httpclient

    from tests.serve.support import ServerProcess

    server = ServerProcess(folder, folder.parent / "server.log")
    try:
        with httpclient.InferenceServerClient(server.url) as client:
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer("model_mc", [tensor])
            v2 = {name: result.as_numpy(name) for name in ("mean", "std")}
        response = httpx.post(f"{server.base}/v1/models/model_mc:predict", json={"instances": x.tolist()}, timeout=60)
        assert response.status_code == 200, response.text
        v1 = response.json()["predictions"]
    finally:
        assert server.stop() == 0, server.log.read_text()
    return v2, v1


def test_keras3_regressor_through_mc_bundle_and_served(keras3_regressor, tmp_path):
    from deploykit.io.inputs import as_model
    from deploykit.uncertainty.bundle import mc_bundle
    from deploykit.uncertainty.mc_graph import MCConfig

    model_file, npz = keras3_regressor
    data = _dataset(npz)
    model = as_model(model_file)  # as the CLI reads a Keras 3 file
    folder = tmp_path / "served"
    folder.mkdir()
    bundle = mc_bundle(model, data, folder / "model_mc.onnx", MCConfig(samples=50, seed=0))
    report = bundle.comparison
    markdown = report.to_markdown()
    assert f"| coverage of the central 95% interval | — | {100 * report.mc.coverage_95:.2f}% |" in markdown
    # trained briefly: a useful mean, and after the std scale intervals near their nominal coverage
    assert report.mc.rmse < 70 and report.deterministic_rmse < 70  # the targets' std is about 77
    print(markdown)
    assert 0.8 <= report.mc.coverage_95 <= 1.0 and report.std_scale.fit.nll_after <= report.std_scale.fit.nll_before
    v2, v1 = _serve_and_read(folder, data.x_test[:20])
    assert v2["mean"].shape == v2["std"].shape == (20, 1) and v2["std"].min() > 0
    assert np.abs(v2["mean"] - bundle.prediction[:20]).max() < 5 * v2["std"].max()  # another draw of the same model
    assert len(v1) == 20 and all(len(row["mean"]) == 1 and row["std"][0] > 0 for row in v1)


def test_deploykit_mc_on_a_keras3_regressor(keras3_regressor, tmp_path, cli):
    from deploykit.data.dataset import load_dataset
    from deploykit.errors import DataError

    model_file, npz = keras3_regressor
    try:
        load_dataset(npz)
    except DataError as exc:
        pytest.skip(f"this branch's data loader refuses regression targets ({exc}); it comes with --task support")
    out = tmp_path / "mc"
    args = ["mc", model_file, "--data", npz, "--out", out, "--samples", "50", "--mc-seed", "0"]
    done = cli(*args, "--task", "regression")
    if done.returncode == 2 and "--task" in done.stderr:
        done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "95% interval coverage" in done.stdout and (out / "model_mc.onnx").is_file()
    assert "coverage of the central 95% interval" in (out / "comparison.md").read_text()
    v2, v1 = _serve_and_read(out, np.load(npz)["x"][:10].astype(np.float32))
    assert v2["std"].shape == (10, 1) and v2["std"].min() > 0 and len(v1) == 10
