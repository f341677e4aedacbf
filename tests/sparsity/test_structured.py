"""Structured pruning: whole units and channels removed, so the exported graphs do fewer multiply-adds."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import ConfigError
from deploykit.sparsity import StructuredConfig, prune_structured


def _units(model) -> dict[str, int]:
    return {
        layer.name: layer.get_weights()[0].shape[-1]
        for layer in model.layers
        if type(layer).__name__ in ("Dense", "Conv2D")
    }


@pytest.mark.slow
def test_half_the_hidden_units_go_the_outputs_stay_and_accuracy_holds(trained_model, digits, tmp_path):
    import onnxruntime as ort

    from deploykit.core.evaluate import score
    from deploykit.export import export_onnx

    result, report = prune_structured(trained_model, digits, 0.5, epochs=3)
    before, after = _units(trained_model), _units(result)
    names = list(before)
    assert [after[n] for n in names[:-1]] == [before[n] // 2 for n in names[:-1]]  # hidden layers halved
    assert after[names[-1]] == before[names[-1]]  # the output layer keeps every class
    assert report.mac_ratio > 1.9 and report.macs_after < report.macs_before
    assert [layer.units_after for layer in report.layers[:2]] == [before[n] // 2 for n in names[:-1]]
    assert score(result, digits.x_test, digits.y_test) >= score(trained_model, digits.x_test, digits.y_test) - 0.05
    assert _units(trained_model) == before  # the input model is untouched
    # the exported graph is really smaller: its MatMul weights have the new widths
    record = export_onnx(result, tmp_path / "s.onnx")
    session = ort.InferenceSession(str(record.path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: digits.x_test})[0]
    np.testing.assert_allclose(probs, np.asarray(result(digits.x_test, training=False)), atol=1e-5)


@pytest.mark.slow
def test_conv_channels_before_a_flatten_go_and_an_add_keeps_its_channels(digits):
    """Channels feeding a Dense through Flatten are removed with every row they feed; channels that meet
    in an Add are coupled and left whole, with the reason."""
    import dataclasses

    from deploykit.backend import keras, set_seed

    set_seed(0)
    data = dataclasses.replace(
        digits,
        **{f"x_{split}": getattr(digits, f"x_{split}").reshape(-1, 8, 8, 1) for split in ("train", "val", "test")},
    )
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b")(a)
    merged = keras.layers.Add()([a, b])
    c = keras.layers.Conv2D(12, 3, activation="relu", name="c")(merged)
    flat = keras.layers.Flatten()(c)
    outputs = keras.layers.Dense(10, activation="softmax", name="out")(flat)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=2, verbose=0)
    result, report = prune_structured(model, data, 0.5, epochs=1)
    assert _units(result) == {"a": 8, "b": 8, "c": 6, "out": 10}
    skipped = {layer.name: layer.skipped for layer in report.layers if layer.skipped}
    assert set(skipped) == {"a", "b"} and all("coupled" in why for why in skipped.values())


def test_fractions_are_checked_with_their_key():
    with pytest.raises(ConfigError, match="fraction"):
        StructuredConfig(fraction=1.0)
    with pytest.raises(ConfigError, match=r"layer_fraction\['dense'\]"):
        StructuredConfig(layer_fraction={"dense": -0.1})
