"""Models with several inputs or outputs through ``deploykit optimize`` and ``deploykit export``, end to end.

The book's chapter 10 Wide & Deep network built line for line (Keras 3 saved as .keras; tf_keras), its variant
with an auxiliary output, and a three-headed regressor, each with an .npz named after its tensors
(tests/multi_models.py). Every shipped artifact is run in its own runtime with its named tensors and
compared with the user's model; the saved model.keras opens in the user's Keras with the same inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.multi_models import (
    TICKET_WORDS,
    diabetes_arrays,
    lstm_seq2seq,
    tensor_names,
    three_heads,
    three_heads_arrays,
    three_heads_npz,
    ticket_model,
    wide_and_deep,
    wide_and_deep_npz,
)

pytestmark = pytest.mark.slow  # each test trains a small model, then runs optimize or export


def _rel_diff(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(1.0, float(np.sqrt(np.mean(want**2)))))


def _onnx_outputs(path, feed: dict) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def _tflite_outputs(path, feed: dict) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return runner(**feed)


def _keras3_reloaded(path):
    import keras

    return keras.saving.load_model(str(path))


def _output_names(model) -> list[str]:
    """The model's output layer names (Keras numbers unnamed layers per process), in name order."""
    return sorted(t._keras_history[0].name for t in model.outputs)


def _shipped(out) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {a["file"]: a for a in report["artifacts"]}


def test_the_books_wide_and_deep_keras3_ships_through_optimize_with_defaults(tmp_path):
    from deploykit.cli.main import main

    model = wide_and_deep(epochs=3)  # Keras 3, as the book builds it; one output
    model.save(tmp_path / "wide_deep.keras")
    wide_and_deep_npz(tmp_path / "wide_deep.npz", model)
    out = tmp_path / "out"
    assert (
        main(
            [
                "optimize",
                str(tmp_path / "wide_deep.keras"),
                "--data",
                str(tmp_path / "wide_deep.npz"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    artifacts = _shipped(out)
    shipped = {f for f, a in artifacts.items() if a["verdict"] in ("pass", "reference")}
    assert {"model.keras", "model.onnx", "model.tflite", "model_float16.onnx"} <= shipped
    for row in artifacts.values():  # within the budget, or rejected with the reason
        assert row["verdict"] in ("pass", "reference") or row["checks"], row
    wide, deep, _ = diabetes_arrays()
    want = np.asarray(model((wide[:64], deep[:64])))
    onnx_out = _onnx_outputs(out / "model.onnx", {"input_wide": wide[:64], "input_deep": deep[:64]})
    assert list(onnx_out) == ["prediction"] and _rel_diff(onnx_out["prediction"], want) <= 1e-4
    tflite_out = _tflite_outputs(out / "model.tflite", {"input_wide": wide[:64], "input_deep": deep[:64]})
    assert _rel_diff(tflite_out["prediction"], want) <= 1e-4
    back = _keras3_reloaded(out / "model.keras")
    assert [t.name for t in back.inputs] == ["input_wide", "input_deep"]
    assert _rel_diff(back((wide[:64], deep[:64])), want) <= 1e-5


def test_the_books_wide_and_deep_in_tf_keras_with_its_aux_output_ships(tmp_path):
    from deploykit.pipeline import OptimizeConfig, Verdict, optimize
    from deploykit.pipeline.tables import ValidateStep

    model = wide_and_deep(aux=True, tf_keras=True, epochs=3)
    wide_and_deep_npz(tmp_path / "wide_deep.npz", model)
    result = optimize(
        model,
        str(tmp_path / "wide_deep.npz"),
        config=OptimizeConfig(validate=ValidateStep(latency_repeats=2)),
        out_dir=tmp_path / "out",
        formats="onnx",
        quantize="float32,int8-dynamic",
    )
    assert result.failure is None
    assert result.artifact("model.onnx").verdict is Verdict.PASS
    wide, deep, _ = diabetes_arrays()
    main, aux = (np.asarray(t) for t in model([wide[:64], deep[:64]]))
    got = _onnx_outputs(result.out_dir / "model.onnx", {"input_wide": wide[:64], "input_deep": deep[:64]})
    names = _output_names(model)
    assert list(got) == names  # the model's own output names, in name order
    assert _rel_diff(got[model.outputs[0]._keras_history[0].name], main) <= 1e-4
    assert _rel_diff(got[model.outputs[1]._keras_history[0].name], aux) <= 1e-4
    report = result.artifact("model.onnx").detail
    assert set(report.per_output) == set(names)  # each output held to the tolerance on its own


def test_a_three_headed_regressor_ships_through_optimize_with_defaults(tmp_path):
    from deploykit.cli.main import main

    model = three_heads(epochs=3)
    model.save(tmp_path / "heads.keras")
    three_heads_npz(tmp_path / "heads.npz", model)
    out = tmp_path / "out"
    assert (
        main(["optimize", str(tmp_path / "heads.keras"), "--data", str(tmp_path / "heads.npz"), "--out", str(out)]) == 0
    )
    artifacts = _shipped(out)
    assert artifacts["model.onnx"]["verdict"] == "pass" and artifacts["model.tflite"]["verdict"] == "pass"
    for row in artifacts.values():
        assert row["verdict"] in ("pass", "reference") or row["checks"], row
    x, _ = three_heads_arrays()
    back = _keras3_reloaded(out / "model.keras")
    assert len(back.outputs) == 3
    want = dict(zip(("price", "rooms", "age"), (np.asarray(t) for t in back(x[:64]))))
    for file, run in (("model.onnx", _onnx_outputs), ("model.tflite", _tflite_outputs)):
        got = run(out / file, {"input": x[:64]})
        assert sorted(got) == ["age", "price", "rooms"]
        for name, value in want.items():
            assert got[name].shape == value.shape and _rel_diff(got[name], value) <= 1e-4, (file, name)


def test_export_writes_every_variant_of_a_two_input_two_output_model(tmp_path):
    from deploykit.cli.main import main

    model = wide_and_deep(aux=True, epochs=2)
    model.save(tmp_path / "wide_deep.keras")
    wide_and_deep_npz(tmp_path / "wide_deep.npz", model)
    out = tmp_path / "exported"
    assert (
        main(
            [
                "export",
                str(tmp_path / "wide_deep.keras"),
                "--data",
                str(tmp_path / "wide_deep.npz"),
                "--out",
                str(out),
                "--quantize",
                "float32,float16,int8-static,int8-full",
                "--repeats",
                "2",
            ]
        )
        == 0
    )
    wide, deep, _ = diabetes_arrays()
    feed = {"input_wide": wide[:32], "input_deep": deep[:32]}
    want = [np.asarray(t) for t in model((wide[:32], deep[:32]))]
    names, aux = _output_names(model), model.outputs[1]._keras_history[0].name
    for file in ("model.onnx", "model_float16.onnx", "model_int8-static.onnx"):
        got = _onnx_outputs(out / file, feed)
        assert list(got) == names and got[aux].shape == (32, 1)
    for file in ("model.tflite", "model_float16.tflite", "model_int8-full.tflite"):
        assert sorted(_tflite_outputs(out / file, feed)) == names
    assert _rel_diff(_onnx_outputs(out / "model.onnx", feed)[aux], want[1]) <= 1e-4
    summary = json.loads((out / "validation.json").read_text())
    assert summary and (out / "validation.md").exists()


def test_the_functional_api_guides_ticket_model_with_a_dict_of_outputs_exports_in_float32_and_float16(tmp_path):
    """Three inputs (two of word ids of any length), two outputs given as a dict, which Keras 3 saves as a dict of
    output layers (it was a KeyError at load). Its float16 ONNX looks up ids near the end of a 10,000-word table:
    float16 rounds 9,999 to 10,000, past the table (it was rejected by onnxruntime's Gather)."""
    from deploykit.cli.main import main

    model, arrays = ticket_model()
    model.save(tmp_path / "ticket.keras")
    np.savez(tmp_path / "ticket.npz", **arrays)
    out = tmp_path / "exported"
    command = ["export", str(tmp_path / "ticket.keras"), "--data", str(tmp_path / "ticket.npz"), "--out", str(out)]
    assert main([*command, "--formats", "onnx", "--quantize", "float32,float16", "--repeats", "2"]) == 0
    rows = 32
    feed = {k: arrays[k][:rows].astype(np.float32) for k in ("title", "body", "tags")}
    feed["title"][:, 0] = TICKET_WORDS - 1  # the table's last rows: 9,999 and 9,997 are not float16 numbers
    feed["body"][:, :3] = [TICKET_WORDS - 1, TICKET_WORDS - 3, 2049]
    want = {k: np.asarray(v) for k, v in model({k: v.astype(np.int64) for k, v in feed.items()}).items()}
    for file, tolerance in (("model.onnx", 1e-4), ("model_float16.onnx", 1e-2)):
        got = _onnx_outputs(out / file, feed)
        assert sorted(got) == ["department", "priority"], file
        for name, value in want.items():
            assert got[name].shape == value.shape and _rel_diff(got[name], value) <= tolerance, (file, name)
    checked = {
        a["validation"]["artifact"]: a["validation"]["passed"]
        for a in json.loads((out / "validation.json").read_text())["artifacts"]
    }
    assert checked == {"model.onnx": True, "model_float16.onnx": True}


def test_mc_dropout_of_a_two_input_model_takes_its_named_inputs(tmp_path):
    from deploykit.core.contract import OUTPUT_COLUMNS_KEY
    from deploykit.pipeline import Status, optimize
    from deploykit.uncertainty.predictor import UncertaintyPredictor

    model = wide_and_deep(aux=True, tf_keras=True, dropout=0.2, epochs=3)
    wide_and_deep_npz(tmp_path / "wide_deep.npz", model)
    result = optimize(
        model,
        str(tmp_path / "wide_deep.npz"),
        out_dir=tmp_path / "out",
        formats="onnx",
        quantize="float32",
        sparsity="none",
        mc_seed=3,
    )
    steps = {s.step: s for s in result.steps}
    assert steps["mc dropout"].status is Status.DONE
    import onnx
    import onnxruntime as ort

    path = result.out_dir / "model_mc.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()][:2] == ["input_deep", "input_wide"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    names = _output_names(model)
    columns = json.loads(props[OUTPUT_COLUMNS_KEY])
    assert columns == {names[0]: [0, 1], names[1]: [1, 2]}
    wide, deep, _ = diabetes_arrays()
    mean = UncertaintyPredictor(path).predict(np.concatenate([deep[:40], wide[:40]], axis=1)).mean
    assert mean.shape == (40, 2)
    main, aux = (np.asarray(t) for t in model([wide[:40], deep[:40]]))
    start = columns[model.outputs[0]._keras_history[0].name][0]
    assert np.corrcoef(mean[:, start], main[:, 0])[0, 1] > 0.9  # the MC mean follows the deterministic main head


def test_keras_io_lstm_seq2seq_ships_through_optimize_and_its_decoder_exports_with_its_states(tmp_path):
    """keras.io's lstm_seq2seq (Keras 3 files as the example saves them): the training model, whose decoder LSTM
    starts from the encoder's returned states, ships (it was refused: "called with {'initial_state': ...}"); every
    shipped file computes what the shipped model.keras computes. The example's inference decoder exports with its
    three outputs named after its tensors: the softmax per step, and the states h and c (``lstm_1:1``, ``lstm_1:2``:
    outputs 1 and 2 of the LSTM layer)."""
    from deploykit.cli.main import main

    training, encoder, decoder, arrays = lstm_seq2seq(rows=240, epochs=2)
    names = tensor_names(training.inputs)
    training.save(tmp_path / "s2s.keras")
    np.savez(
        tmp_path / "s2s.npz",
        **{names[0]: arrays["source"], names[1]: arrays["target_in"]},
        **{tensor_names(training.outputs)[0]: arrays["target_out"]},
    )
    out = tmp_path / "out"
    command = ["optimize", str(tmp_path / "s2s.keras"), "--data", str(tmp_path / "s2s.npz"), "--out", str(out)]
    assert main([*command, "--epochs", "2"]) == 0
    shipped = {f for f, a in _shipped(out).items() if a["verdict"] == "pass"}
    assert {"model.keras", "model.onnx", "model.tflite"} <= shipped
    feed = {names[0]: arrays["source"][:16], names[1]: arrays["target_in"][:16]}
    want = np.asarray(_keras3_reloaded(out / "model.keras")([feed[n] for n in names]))
    output = tensor_names(training.outputs)[0]
    for file in ("model.onnx", "model.tflite"):
        got = (_onnx_outputs if file.endswith(".onnx") else _tflite_outputs)(out / file, feed)
        assert got[output].shape == want.shape and _rel_diff(got[output], want) <= 1e-4, file

    states = [np.asarray(s) for s in encoder.predict(arrays["source"], verbose=0)]
    inputs, outputs = tensor_names(decoder.inputs), tensor_names(decoder.outputs)
    assert outputs[1:] == [f"{decoder.outputs[1]._keras_history[0].name}:{i}" for i in (1, 2)]
    decoder.save(tmp_path / "decoder.keras")
    given = dict(zip(inputs, [arrays["target_in"], *states], strict=True))
    targets = dict(zip(outputs, decoder.predict(list(given.values()), verbose=0), strict=True))
    np.savez(tmp_path / "decoder.npz", **given, **targets)
    exported = tmp_path / "decoder"
    command = ["export", str(tmp_path / "decoder.keras"), "--data", str(tmp_path / "decoder.npz")]
    assert main([*command, "--out", str(exported), "--formats", "onnx,tflite", "--quantize", "float32"]) == 0
    feed = {k: v[:16] for k, v in given.items()}
    for file in ("model.onnx", "model.tflite"):
        got = (_onnx_outputs if file.endswith(".onnx") else _tflite_outputs)(exported / file, feed)
        assert sorted(got) == sorted(outputs), file
        for name in outputs:
            assert _rel_diff(got[name], targets[name][:16]) <= 1e-4, (file, name)
