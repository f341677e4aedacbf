"""optimize on a convnet: its ONNX int8 is tried as int8-static (QDQ convolutions) before int8-dynamic."""

from __future__ import annotations

import json

import onnx
import pytest

from tests.helpers import ships_by_budget

pytestmark = pytest.mark.slow  # trains a convnet and runs optimize


@pytest.mark.slow
def test_a_convnets_onnx_int8_is_static_qdq_first_and_ships_by_the_budget_rule(digits, tmp_path):
    from deploykit.backend import keras, set_seed
    from deploykit.pipeline import OptimizeConfig, optimize
    from deploykit.pipeline.tables import ValidateStep

    set_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Reshape((8, 8, 1)),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=4, batch_size=32, verbose=0)
    result = optimize(
        model,
        digits,
        out_dir=tmp_path / "out",
        sparsity="none",
        formats="onnx",
        quantize="float32,int8-dynamic",
        mc=False,
        config=OptimizeConfig(validate=ValidateStep(latency_repeats=2)),  # no latency is read here
    )
    report = json.loads((result.out_dir / "report.json").read_text())
    tries = [t for t in report["tries"] if t["stage"] == "int8"]
    assert tries[0]["setting"].startswith("onnx int8-static") and "rather than int8-dynamic" in tries[0]["setting"]
    assert tries[-1]["kept"] or not any(t["kept"] for t in tries)  # the search stops at the first within budget
    rows = {r["file"]: r for r in report["artifacts"]}
    int8 = [f for f in rows if f.startswith("model_int8")]
    assert len(int8) == 1  # one row for the requested int8 variant, whichever setting it kept
    (file,) = int8
    assert rows[file]["verdict"] == ("pass" if ships_by_budget(rows[file], report) else "rejected")
    if rows[file]["verdict"] == "pass" and file == "model_int8-static.onnx":
        ops = {n.op_type for n in onnx.load(str(result.out_dir / file)).graph.node}
        assert "QuantizeLinear" in ops and "Conv" in ops and "ConvInteger" not in ops, json.dumps(
            tries
        )  # QDQ: fused to QLinearConv
