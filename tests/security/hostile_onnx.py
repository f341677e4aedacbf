"""Builders of hostile ONNX files (issue 26), made with onnx's helpers as the attack made them.

Each writes a tiny ``Y = X @ W`` model (``X`` float [N, 4], ``W`` [4, 3]) or a graph that declares more than it
holds; the external-data ones store ``W`` outside the ``.onnx`` file with a ``location`` the test chooses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
SECRET = b"TOP-SECRET-" * 10  # 110 bytes, more than W's 48


def _matmul_graph(weights):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "W"], ["probabilities"])], "g", [x], [y], [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def external_data_model(
    folder: Path, location: str, name: str = "model.onnx", offset: int | None = None, length: int | None = 48
) -> Path:
    """``folder/name`` whose ``W`` is read from ``location`` (as written in the file, unchecked)."""
    import onnx
    from onnx import TensorProto

    weights = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3])
    weights.data_location = TensorProto.EXTERNAL
    entries = {
        "location": location,
        **({"offset": str(offset)} if offset is not None else {}),
        **({"length": str(length)} if length is not None else {}),
    }
    for key, value in entries.items():
        weights.external_data.add(key=key, value=value)
    path = folder / name
    onnx.save(_matmul_graph(weights), str(path))
    return path


def honest_external_model(folder: Path, name: str = "model.onnx", location: str = "model.bin") -> Path:
    """``W`` in ``folder/location``, written by onnx itself (``save_as_external_data``)."""
    import onnx
    from onnx import numpy_helper

    model = _matmul_graph(numpy_helper.from_array(WEIGHTS, "W"))
    path = folder / name
    onnx.save(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path


def wide_input_model(folder: Path, features: int = 250_000_000) -> Path:
    """A ~200-byte file declaring input ``[N, features]``: a zero row of it is 1 GB of float32."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", features])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["probabilities"])], "g", [x], [y])
    path = folder / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def constant_of_shape_model(folder: Path, op: str = "ConstantOfShape", elements: int = 500_000_000) -> Path:
    """A tiny file whose ConstantOfShape (or Expand) makes a constant ``[elements]`` float tensor (2 GB) at load."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [elements])
    nodes = [helper.make_node("Constant", [], ["big_shape"], value=shape)]
    if op == "ConstantOfShape":
        nodes.append(
            helper.make_node(
                "ConstantOfShape", ["big_shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
            )
        )
    else:
        one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
        nodes += [
            helper.make_node("Constant", [], ["one"], value=one),
            helper.make_node(op, ["one", "big_shape"], ["big"]),
        ]
    nodes += [
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
        helper.make_node("Add", ["input", "total"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    path = folder / f"{op.lower()}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def slow_loop_model(folder: Path, name: str = "slow.onnx", offset: float = 0.0) -> Path:
    """``probabilities = input + trips``, computed by a ``Loop`` of ``(max(input) + offset) * 1e12`` steps.

    With ``offset`` 0 a zero row answers at once (the server's start-up check passes) and a row of ones loops
    ~forever: the slow request of issue 26 item 3, and the slow client of ``benchmarks/bench_serve.py``. With
    ``offset`` 1 no row ever finishes.
    """
    import onnx
    from onnx import TensorProto as T
    from onnx import helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", T.INT64, []),
            helper.make_tensor_value_info("cond_in", T.BOOL, []),
            helper.make_tensor_value_info("v_in", T.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", T.BOOL, []),
            helper.make_tensor_value_info("v_out", T.FLOAT, ["N", 4]),
        ],
        [helper.make_tensor("one", T.FLOAT, [], [1.0])],
    )
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["top"], keepdims=0),
        helper.make_node("Add", ["top", "offset"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["trips"], to=T.INT64),
        helper.make_node("Constant", [], ["go"], value=helper.make_tensor("c", T.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "go", "input"], ["probabilities"], body=body),
    ]
    constants = [helper.make_tensor("scale", T.FLOAT, [], [1e12]), helper.make_tensor("offset", T.FLOAT, [], [offset])]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", T.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", T.FLOAT, ["N", 4])],
        constants,
    )
    path = folder / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path
