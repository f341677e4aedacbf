"""Folded and pruned models export and validate; a pruned model's zeros stay zeros in every exported weight."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.export import TfliteRunner, export_onnx, export_tflite, validate
from deploykit.export.metadata import read_metadata

pytestmark = pytest.mark.slow  # every test reads the trained_model fixture (trains a model)

SPARSITY = 0.8


def _magnitude_pruned(model, fraction: float):
    """A copy with the smallest |w| of every Dense kernel set to exactly 0 (what pruning leaves)."""
    from deploykit.core.chain import from_chain, to_chain

    chain = to_chain(model)
    for spec in chain.layers:
        if spec.class_name == "Dense":
            kernel = spec.weights[0]
            cut = np.quantile(np.abs(kernel), fraction)
            spec.weights[0] = np.where(np.abs(kernel) <= cut, 0.0, kernel).astype(np.float32)
    return from_chain(chain)


def _kernels(model) -> list[np.ndarray]:
    return [l.get_weights()[0] for l in model.layers if type(l).__name__ == "Dense"]


@pytest.fixture(scope="module")
def pruned(trained_model):
    return _magnitude_pruned(trained_model, SPARSITY)


@pytest.fixture(scope="module")
def pruned_exports(tmp_path_factory, pruned, digits):
    out = tmp_path_factory.mktemp("pruned")
    return {
        "onnx-float32": export_onnx(pruned, out / "p.onnx"),
        "onnx-int8-static": export_onnx(pruned, out / "p8.onnx", quantization="int8-static", calibration_data=digits),
        "tflite-float32": export_tflite(pruned, out / "p.tflite"),
        "tflite-int8-full": export_tflite(
            pruned, out / "p8.tflite", quantization="int8-full", representative_data=digits, int8_io=True
        ),
    }


def _onnx_weights(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(stored values, the value that means zero) of every 2-D initializer."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zero_points = {
        n.input[0]: inits[n.input[2]]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[0] in inits
    }
    return [(v, np.asarray(zero_points.get(name, 0))) for name, v in inits.items() if v.ndim == 2]


def _tflite_weights(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(stored values, the value that means zero) of every constant 2-D tensor; FC weights are stored [out, in]."""
    interpreter = TfliteRunner(path).interpreter
    found = []
    for detail in interpreter.get_tensor_details():
        if len(detail["shape"]) != 2:
            continue
        try:
            value = interpreter.get_tensor(detail["index"])
        except ValueError:  # an activation, not a constant
            continue
        zero = detail["quantization_parameters"]["zero_points"]
        found.append((value.T, np.asarray(zero if len(zero) else 0)))
    return found


def _assert_zeros_kept(kernels: list[np.ndarray], weights: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Each kernel has a stored weight of its shape that is zero (zero-point-equal) wherever the kernel is 0."""
    for kernel in kernels:
        zeros = kernel == 0
        assert zeros.mean() >= SPARSITY - 0.01
        candidates = [(v, z) for v, z in weights if v.shape == kernel.shape]
        assert candidates, f"no stored weight of shape {kernel.shape}"
        kept = [
            np.all(v[zeros] == np.broadcast_to(z if z.ndim == 0 else z[None, :], v.shape)[zeros]) for v, z in candidates
        ]
        assert any(kept), kernel.shape


@pytest.mark.parametrize(
    "name, reader",
    [
        ("onnx-float32", _onnx_weights),
        ("onnx-int8-static", _onnx_weights),
        ("tflite-float32", _tflite_weights),
        ("tflite-int8-full", _tflite_weights),
    ],
)
def test_pruned_zeros_are_still_zeros_in_the_exported_weights(name, reader, pruned, pruned_exports):
    _assert_zeros_kept(_kernels(pruned), reader(pruned_exports[name].path))


@pytest.mark.parametrize("name", ["onnx-float32", "onnx-int8-static", "tflite-float32", "tflite-int8-full"])
def test_pruned_exports_validate_against_the_pruned_model(name, pruned_exports, pruned, digits):
    report = validate(pruned_exports[name], digits, pruned, repeats=3)
    assert report.passed


def test_onnx_metadata_records_the_measured_sparsity(pruned_exports, pruned):
    kernels = _kernels(pruned)
    expected = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert read_metadata(pruned_exports["onnx-float32"].path).sparsity == pytest.approx(expected, abs=1e-6)


def test_folded_model_exports_and_validates(tmp_path, trained_model, digits):
    from deploykit.fold import fold_batchnorm

    folded, _ = fold_batchnorm(trained_model)
    assert not any(type(l).__name__ in ("BatchNormalization", "Normalization") for l in folded.layers)
    onnx_record = export_onnx(folded, tmp_path / "folded.onnx")
    assert validate(onnx_record, digits, folded, repeats=3).passed
    assert validate(onnx_record, digits, trained_model, repeats=3).passed  # the fold is exact to 1e-4
    # Folding moves the input standardization (x1000 on the constant digits pixels) into the first kernel;
    # the int8 preparation must cope with it, or full-integer int8 collapses.
    tflite_record = export_tflite(
        folded, tmp_path / "folded8.tflite", quantization="int8-full", representative_data=digits
    )
    assert validate(tflite_record, digits, trained_model, repeats=3).passed
