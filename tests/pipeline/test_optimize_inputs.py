"""``optimize`` takes what the CLI takes: a Keras 3 model object (given back as Keras 3 files) and ``(x, y)`` arrays."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.io.models import read_model_file
from deploykit.pipeline import OptimizeConfig, optimize
from deploykit.pipeline.tables import ValidateStep


@pytest.mark.slow  # trains nothing, but exports and imports through Keras 3
def test_a_keras3_model_object_and_arrays_go_through_like_files(tmp_path):
    import keras

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit does)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, verbose=0)
    result = optimize(
        model,
        (x, y),
        out_dir=tmp_path / "out",
        sparsity="none",
        mc=False,
        formats="onnx",
        quantize="float32",
        config=OptimizeConfig(validate=ValidateStep(latency_repeats=2)),  # no latency is read here
    )
    assert result.artifact("model.onnx").verdict.shipped
    assert read_model_file(tmp_path / "out" / "model.keras").is_keras3  # given back in the framework it came from
    assert read_model_file(tmp_path / "out" / "original.keras").is_keras3
    expected = np.asarray(model(x[:20], training=False))
    assert np.abs(result.model(x[:20], training=False).numpy() - expected).max() <= 1e-5


def test_a_users_model_without_data_is_refused_not_run_on_digits(tmp_path):
    """The CLI's --data rule holds for the API: data=None on a user's model names the missing data, writes nothing."""
    from deploykit.errors import UsageError
    from tests.helpers import build_head

    model = build_head(input_dim=64, outputs=10)  # would even fit digits: the refusal is by rule, not by shape
    with pytest.raises(UsageError, match="data is needed: the model is not the shipped digits model"):
        optimize(model, out_dir=tmp_path / "out")
    with pytest.raises(UsageError, match="data is needed"):
        optimize(str(tmp_path / "user.keras"), out_dir=tmp_path / "out")  # a file: refused before it is read
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # measures the shipped model on digits
def test_the_shipped_model_still_runs_on_digits_by_default(tmp_path):
    """The README's quick start: the shipped model with no data runs on the embedded digits (here: no steps)."""
    from deploykit.shipped import SHIPPED_MODEL

    if not SHIPPED_MODEL.exists():
        pytest.skip(f"the shipped model is absent ({SHIPPED_MODEL.name})")
    result = optimize(
        SHIPPED_MODEL, out_dir=tmp_path / "out", sparsity="none", fold=False, export=False, mc=False, temperature=False
    )
    assert "digits" in (tmp_path / "out" / "deploykit.toml").read_text()
    assert result.out_dir == tmp_path / "out"
