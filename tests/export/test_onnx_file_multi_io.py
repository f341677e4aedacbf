"""A float32 ONNX file with several inputs or outputs is quantized from the file (``deploykit export model.onnx``),
its .npz named after the file's tensors as a Keras model's is.

Before, ``deploykit export wide_deep.onnx --data wd.npz`` refused the .npz (``an .npz must hold arrays x and y``),
int8-static fed its calibration rows to the first input alone, and a converter's file (tf2onnx names each input's
batch axis apart) stopped onnxruntime's shape inference behind int8-static (``Incomplete symbolic shape
inference``). A converter's file says nothing of its task either: a regressor's variants were held to the
classifier's tolerances, which a regressor cannot check ("not checked"), and shipped unchecked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.errors import UsageError
from deploykit.export.onnx_quant import _Reader, graph_inputs, input_layout
from tests.helpers import export_every_onnx_variant
from tests.multi_models import three_heads, three_heads_npz, wide_and_deep, wide_and_deep_npz


def _two_input_graph(batch_wide="unk__6", batch_deep="unk__7", deep_width=6):
    """y = concat(wide, deep) @ w: two inputs whose batch axes are named apart, as tf2onnx writes them."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(5 + 6, dtype=np.float32).reshape(11, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["input_wide", "input_deep"], ["c"], axis=1),
            helper.make_node("MatMul", ["c", "w"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("input_wide", TensorProto.FLOAT, [batch_wide, 5]),
            helper.make_tensor_value_info("input_deep", TensorProto.FLOAT, [batch_deep, deep_width]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_packed_calibration_row_is_cut_into_the_inputs_by_name():
    """The calibration reader cuts a packed row as the runners do: inputs in name order (input_deep, input_wide)."""
    proto = _two_input_graph()
    assert graph_inputs(proto) == {"input_wide": (5,), "input_deep": (6,)}
    row = np.arange(11, dtype=np.float32)
    feed = _Reader(row[None], proto).get_next()
    assert set(feed) == {"input_wide", "input_deep"}
    np.testing.assert_array_equal(feed["input_deep"], row[None, :6])
    np.testing.assert_array_equal(feed["input_wide"], row[None, 6:])


def test_the_int8_preparation_measures_each_kernel_on_its_own_input():
    """Two Dense layers, each reading one graph input: the clip search's rows are that input's columns of the
    packed calibration rows (input_deep first, by name), as onnxruntime is fed them."""
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.export.onnx_int8_prep import _inputs_of, _kernels

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["input_deep", "w"], ["d"], name="deep"),
        helper.make_node("MatMul", ["input_wide", "v"], ["e"], name="wide"),
        helper.make_node("Add", ["d", "e"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", k])
            for n, k in (("input_wide", 5), ("input_deep", 6))
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(rng.normal(size=(6, 2)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=(5, 2)).astype(np.float32), "v"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    packed = rng.normal(size=(40, 11)).astype(np.float32)
    kernels = _kernels(proto)
    rows = dict(zip((k.node.name for k in kernels), _inputs_of(proto, kernels, packed)))
    np.testing.assert_array_equal(rows["deep"], packed[:, :6])
    np.testing.assert_array_equal(rows["wide"], packed[:, 6:])


def test_an_input_without_a_fixed_shape_is_named():
    with pytest.raises(UsageError, match="'input_deep' has unknown axes"):
        input_layout(_two_input_graph(deep_width="features"))


def test_a_file_whose_inputs_cannot_be_packed_is_refused_in_one_line(tmp_path, cli):
    """Several inputs are read as one packed row: an input axis without a size is named, nothing is written (before:
    ``ValueError: invalid literal for int() with base 10: 'features'``)."""
    import onnx

    onnx.save(_two_input_graph(deep_width="features"), str(tmp_path / "two.onnx"))
    rng = np.random.default_rng(0)
    arrays = {"input_wide": rng.normal(size=(50, 5)), "input_deep": rng.normal(size=(50, 6)), "y": rng.normal(size=50)}
    np.savez(tmp_path / "two.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
    for command in ("export", "validate"):
        out = ("--quantize", "int8-static", "--out", tmp_path / "q") if command == "export" else ()
        result = cli(command, tmp_path / "two.onnx", "--data", tmp_path / "two.npz", *out)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "'input_deep' has axes of unknown size" in lines[0]
    assert not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def users_wide_and_deep(tmp_path_factory):
    """The book's Wide & Deep (tf_keras), converted by its user with ``tf2onnx.convert.from_keras`` (its own
    names, no deploykit metadata), and the .npz named after its inputs."""
    import tensorflow as tf
    import tf2onnx

    folder = tmp_path_factory.mktemp("wide_deep")
    model = wide_and_deep(tf_keras=True, epochs=5)
    spec = [
        tf.TensorSpec((None, 5), tf.float32, name="input_wide"),
        tf.TensorSpec((None, 6), tf.float32, name="input_deep"),
    ]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(folder / "user.onnx"))
    wide_and_deep_npz(folder / "wd.npz", model)
    return folder / "user.onnx", folder / "wd.npz"


def _rmse(session, arrays, rows) -> float:
    feeds = {i.name: arrays[i.name][rows].astype(np.float32) for i in session.get_inputs()}
    predicted = session.run(None, feeds)[0].ravel()
    return float(np.sqrt(np.mean((predicted - arrays["y"][rows]) ** 2)))


@pytest.mark.slow
def test_a_users_wide_and_deep_onnx_file_ships_every_onnx_variant(users_wide_and_deep, tmp_path, cli):
    """Each variant ships, held to the regressor's tolerance the data implies (the file does not say), runs in
    onnxruntime with the two named inputs, and says it is a regressor, so it is served as one."""
    import onnx
    import onnxruntime as ort

    from deploykit.export.metadata import read_metadata

    source, npz = users_wide_and_deep
    out = tmp_path / "q"
    report = export_every_onnx_variant(cli, source, npz, out)
    checks = {a["validation"]["quantization"]: a["validation"] for a in report["artifacts"]}
    assert set(checks) == {"float16", "int8-dynamic", "int8-static"}
    for check in checks.values():
        assert check["passed"] and check["task"] == "regression" and not check["skipped"], check
        assert check["tolerance"]["max_accuracy_drop"] is None and check["tolerance"]["min_agreement"] is None, check
    static = out / "model_int8-static.onnx"
    for entry in report["artifacts"]:  # the int8 preparation measured each kernel's input with both inputs fed
        int8 = entry["export"]["quantization"].startswith("int8")
        assert not int8 or entry["export"]["preparation"][0].startswith("int8_weight_clip("), entry["export"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(static)).graph.node}
    assert read_metadata(static).task == {"task": "regression", "output": "values"}
    arrays = dict(np.load(npz))
    rows = np.arange(len(arrays["y"]))  # every row: both files on the same ones
    source_rmse = _rmse(ort.InferenceSession(str(source)), arrays, rows)
    assert _rmse(ort.InferenceSession(str(static)), arrays, rows) <= 1.05 * source_rmse


@pytest.mark.slow
def test_deploykits_own_file_with_several_outputs_is_quantized_from_the_file(tmp_path, cli):
    """A regressor with three named outputs, exported by deploykit, then quantized from its ONNX file (its .npz
    names the outputs' targets)."""
    model = three_heads(tf_keras=False, epochs=5)
    model.save(tmp_path / "heads.keras")
    three_heads_npz(tmp_path / "heads.npz", model)
    float_dir, out = tmp_path / "float", tmp_path / "q"
    common = ("--data", tmp_path / "heads.npz", "--repeats", "2")
    exported = cli("export", tmp_path / "heads.keras", "--formats", "onnx", "--out", float_dir, *common)
    assert exported.returncode == 0, exported.stderr
    result = cli("export", float_dir / "model.onnx", "--quantize", "int8-static,int8-dynamic", "--out", out, *common)
    assert result.returncode == 0, result.stderr
    checks = [a["validation"] for a in json.loads((out / "validation.json").read_text())["artifacts"]]
    assert len(checks) == 2 and all(c["passed"] and c["per_output"] for c in checks), checks
