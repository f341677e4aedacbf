"""The per-layer int8 fallback: rank layers by their effect in float, return the most harmful until within budget."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.export.int8_fallback import layer_kernels, rank_candidates, return_to_float, rounding_error

#: What each layer costs when quantized (validation points); a try passes when the total cost is <= 1.
COST = {"conv": 0.2, "conv_1": 2.0, "conv_2": 0.5, "dense": 0.9}


def _attempt(log: list):
    def attempt(exclude):
        log.append(exclude)
        cost = sum(c for n, c in COST.items() if n not in exclude)
        return cost <= 1.0, 90.0 - cost

    return attempt


def test_ranks_by_effect_then_returns_the_most_harmful_to_float_until_within_the_budget():
    log: list = []
    report = return_to_float(list(COST), _attempt(log))
    assert [e.layer for e in report.ranking] == ["conv_1", "dense", "conv_2", "conv"]  # most harmful first
    assert log[:4] == [("conv",), ("conv_1",), ("conv_2",), ("dense",)]
    assert log[4:] == [("conv_1", "dense")]  # conv_1 alone (cost 1.6) missed; with dense in float: 0.7
    assert report.passed and report.kept_float == ["conv_1", "dense"] and report.tries == 5
    assert "conv_1, dense returned to float" in report.describe()


def test_a_single_layer_within_the_budget_stops_the_ranking():
    log: list = []
    cheap = {"a": 0.3, "b": 1.5, "c": 0.1}

    def attempt(exclude):
        log.append(exclude)
        return sum(c for n, c in cheap.items() if n not in exclude) <= 1.0, 0.0

    report = return_to_float(list(cheap), attempt)
    assert log == [("a",), ("b",)] and report.kept_float == ["b"]


def test_bounded_tries_never_all_layers_in_float_and_a_time_budget_stops_it():
    log: list = []
    hopeless = lambda exclude: (log.append(exclude) or False, float(len(exclude)))  # noqa: E731
    report = return_to_float(["a", "b", "c"], hopeless)
    assert not report.passed and report.kept_float == [] and ("a", "b", "c") not in [tuple(sorted(t)) for t in log]
    assert report.tries == 4 and "no layer set within the budget in 4 tries" in report.describe()
    log.clear()
    assert return_to_float(list("abcdefgh"), hopeless, max_tries=5).tries == 5
    assert return_to_float(list("abc"), hopeless, allowed=lambda: False).tries == 0


def test_rank_candidates_keeps_graph_order_and_picks_the_kernels_int8_rounds_worst():
    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(64, 8)).astype(np.float32)
    spiky = smooth.copy()
    spiky[0] *= 200  # one outlier row per channel: every other weight rounds to 0 or 1 step
    assert rounding_error(spiky) > 10 * rounding_error(smooth)
    assert rounding_error(np.zeros((3, 4))) == 0.0
    kernels = {"a": smooth, "b": spiky, "c": smooth * 2, "d": spiky[..., :4]}
    assert rank_candidates(kernels, limit=2) == ["b", "d"]
    assert rank_candidates(kernels, limit=4) == ["a", "b", "c", "d"]


def test_layer_kernels_of_a_keras_model_and_names_it_cannot_resolve():
    from deploykit.backend import keras

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")], name="inner")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="head")])
    kernels = layer_kernels(model, ["head", "inner_dense"])
    assert kernels["head"].shape == (3, 2) and rounding_error(kernels["inner_dense"]) == 0.0
    assert rank_candidates(kernels, limit=1) == ["head"]


@pytest.mark.slow
def test_export_returns_the_most_harmful_layer_of_a_small_convnet_to_float_when_int8_static_misses(digits, tmp_path):
    """A tutorial-style convnet on raw digits pixels (0-16), and its float32 ONNX file: whole-model QDQ int8 may miss
    the 1 pt budget; the bundle then ranks the layers on the validation split, leaves the most harmful in float, and
    validates that artifact on the test split as any other (in onnxruntime)."""
    import dataclasses

    from deploykit.backend import keras, set_seed
    from deploykit.export import export_onnx

    set_seed(0)
    images = {k: getattr(digits, k).reshape(-1, 8, 8, 1) for k in ("x_train", "x_val", "x_test")}
    data = dataclasses.replace(digits, **images)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=6, verbose=0)
    _check_fallback(model, data, tmp_path / "keras", lambda node: node.name.split("/")[1])
    onnx_file = export_onnx(model, tmp_path / "model.onnx", quantization="float32", calibration_data=data).path
    _check_fallback(onnx_file, data, tmp_path / "onnx", lambda node: node.name)


def _check_fallback(source, data, out, layer_of) -> None:
    """export_bundle(source, int8-static): it ships only within the tolerance; the layers it names stay float."""
    import onnx

    from deploykit.errors import ValidationError
    from deploykit.export import ExportConfig, export_bundle

    lines: list[str] = []
    try:
        bundle = export_bundle(
            source, data, out, ExportConfig(formats="onnx", quantize="int8-static"), progress=lines.append
        )
    except ValidationError:  # nothing within the budget even so: the fallback ran and said so
        assert any("per-layer fallback, no layer set within the budget" in line for line in lines)
        return
    (record,), (report,) = bundle.exports, bundle.validations
    assert report.passed  # the test split, checked like every artifact
    notes = [p for p in record.preparation if p.startswith("int8 recovery: ")]
    if not any("missed its tolerance" in line for line in lines):
        assert not notes  # whole-model int8 was within the budget: nothing returned to float
        return
    (note,) = notes
    kept = note.removeprefix("int8 recovery: ").split(" returned to float")[0].split(", ")
    graph = onnx.load(str(record.path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    weighted = {layer_of(n): n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert set(kept) <= set(weighted)
    for layer, node in weighted.items():  # the layers named stay float; every other one is int8
        assert (node.input[1] in dequantized) is (layer not in kept), (layer, kept)
