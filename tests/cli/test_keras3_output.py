"""Keras 3 in, Keras 3 out: ``deploykit fold``, ``prune`` and ``compact`` write a file plain Keras 3 opens.

The written files are loaded in a separate process by ``keras.saving.load_model`` (Keras 3, no
TF_USE_LEGACY_KERAS) and compared with the models they come from; tf_keras input stays tf_keras.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from deploykit.io.models import load_model, read_model_file, save_model

TOL = 1e-5
pytestmark = pytest.mark.slow  # Keras 3 imports, model saves and a separate Keras 3 process: seconds each


@pytest.fixture(scope="module")
def k3():
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as in deploykit itself)

    assert keras.__version__.startswith("3.")
    return keras


def keras3_outputs(cases, tmp_path) -> list[np.ndarray]:
    """Outputs of each ``(path, x)`` as plain Keras 3 loads and runs it, all in one fresh process."""
    args = []
    for k, (path, x) in enumerate(cases):
        np.save(tmp_path / f"x{k}.npy", x)
        args += [str(path), str(tmp_path / f"x{k}.npy"), str(tmp_path / f"y{k}.npy")]
    code = (
        "import sys, numpy as np, keras\n"
        "for p, x, y in zip(*[iter(sys.argv[1:])] * 3):\n"
        "    m = keras.saving.load_model(p)\n"
        "    np.save(y, keras.ops.convert_to_numpy(m(np.load(x), training=False)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    run = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return [np.load(tmp_path / f"y{k}.npy") for k in range(len(cases))]


def _cnn(k3):
    """Conv2D + BN + ReLU, a second conv (one dead channel: compact removes it), GAP, Dense softmax."""
    from tests.helpers import randomize_batchnorm

    L = k3.layers
    model = k3.Sequential(
        [
            k3.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", name="c1"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.Conv2D(6, 3, activation="relu", name="c2"),
            L.GlobalAveragePooling2D(),
            L.Dense(3, activation="softmax", name="out"),
        ],
        name="k3_cnn",
    )
    randomize_batchnorm(model, 2)
    kernel, bias = model.get_layer("c2").get_weights()
    kernel[..., 1] = 0.0
    model.get_layer("c2").set_weights([kernel, bias])
    return model


def _x(shape, n=16):
    return np.random.default_rng(0).normal(size=(n, *shape)).astype("float32")


def _outputs(model, x):
    return np.asarray(model(x, training=False), dtype=np.float64)


def test_fold_and_compact_give_keras3_files_back(k3, tmp_path, cli):
    source = _cnn(k3)
    src = tmp_path / "in.keras"
    source.save(src)
    x = _x((8, 8, 1))
    expected = _outputs(source, x)
    folded, small = tmp_path / "folded.keras", tmp_path / "small.keras"
    run = cli("fold", src, "--out", folded)
    assert run.returncode == 0, run.stderr
    run = cli("compact", src, "--out", small)
    assert run.returncode == 0, run.stderr
    assert "c2" in run.stdout and "6 -> 5" in run.stdout  # the dead channel went
    for path in (folded, small):
        assert read_model_file(path).is_keras3, path
    for path, got in zip((folded, small), keras3_outputs([(folded, x), (small, x)], tmp_path)):
        assert np.abs(got - expected).max() <= TOL, path
    layers = [type(l).__name__ for l in k3.saving.load_model(folded).layers]
    assert "BatchNormalization" not in layers


def test_prune_gives_a_keras3_file_back_with_its_zeros(k3, tmp_path, cli):
    L = k3.layers
    source = k3.Sequential(
        [k3.Input((64,)), L.Dense(32, activation="relu", name="hidden"), L.Dense(10, activation="softmax", name="out")],
        name="k3_dense",
    )
    src = tmp_path / "in.keras"
    source.save(src)
    out = tmp_path / "pruned.keras"
    run = cli("prune", src, "--data", "digits", "--sparsity", "0.5", "--epochs", "1", "--out", out)
    assert run.returncode == 0, run.stderr
    assert read_model_file(out).is_keras3
    pruned = load_model(out)  # deploykit's own reading of the Keras 3 file
    assert abs(np.mean(pruned.get_layer("hidden").get_weights()[0] == 0) - 0.5) <= 0.01
    x = _x((64,))
    (got,) = keras3_outputs([(out, x)], tmp_path)
    assert np.abs(got - _outputs(pruned, x)).max() <= TOL
    kernel = k3.saving.load_model(out).get_layer("hidden").get_weights()[0]
    assert abs(np.mean(kernel == 0) - 0.5) <= 0.01


def test_tf_keras_in_gives_tf_keras_out(tmp_path, cli):
    from tests.core.models import cnn

    model = cnn()
    src = save_model(model, tmp_path / "in.keras")
    out = tmp_path / "small.keras"
    run = cli("compact", src, "--out", out)
    assert run.returncode == 0, run.stderr
    assert not read_model_file(out).is_keras3
    x = _x((8, 8, 1))
    assert np.abs(_outputs(load_model(out), x) - _outputs(model, x)).max() <= TOL


def test_keras3_input_with_an_h5_output_is_one_usage_error(k3, tmp_path, cli):
    src = tmp_path / "in.keras"
    _cnn(k3).save(src)
    for command in ("fold", "compact"):
        out = tmp_path / "out.h5"
        run = cli(command, src, "--out", out)
        assert run.returncode == 2, run.stderr
        assert run.stderr.strip().splitlines()[-1] == (
            f"deploykit {command}: error: --out {out}: the model is a Keras 3 file and is written back as one; "
            "use a .keras suffix"
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.keras"]
