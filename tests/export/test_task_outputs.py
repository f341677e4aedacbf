"""Export by output kind: a logits classifier ships `logits` and `probabilities`, a regressor `prediction`.

Every artifact carries `deploykit.task`; regressors are validated by max absolute / relative error and RMSE.
"""

import numpy as np
import onnx
import pytest

from deploykit.core.contract import LOGITS_NAME, OUTPUT_NAME, PREDICTION_NAME
from deploykit.core.task import OutputKind, Task
from deploykit.errors import DataError
from deploykit.export import export_onnx, export_tflite, validate
from deploykit.export.config import Tolerance
from deploykit.export.metadata import read_metadata
from deploykit.export.runtimes import OnnxRunner, TfliteRunner
from deploykit.io.inputs import as_dataset
from tests.helpers import build_head, regression_arrays


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def regression():
    x, y = regression_arrays()
    return as_dataset((x, y), task="regression")


def test_a_logits_classifier_exports_logits_and_probabilities_computed_in_the_graph(tmp_path):
    from deploykit.data.dataset import load_dataset

    model = build_head(outputs=10)
    data = load_dataset("digits")
    record = export_onnx(model, tmp_path / "m.onnx", metadata=None)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.name for o in proto.graph.output] == [LOGITS_NAME, OUTPUT_NAME]
    assert "Softmax" in {n.op_type for n in proto.graph.node}
    assert record.output_name == OUTPUT_NAME
    meta = read_metadata(proto)
    assert meta.task == {"task": "classification", "output": "logits"} and len(meta.class_names) == 10
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits, probs = session.run(None, {"input": data.x_test[:50]})
    keras_logits = np.asarray(model(data.x_test[:50], training=False))
    np.testing.assert_allclose(logits, keras_logits, atol=1e-4)
    np.testing.assert_allclose(probs, _softmax(keras_logits), atol=1e-5)
    report = validate(
        record,
        data,
        reference=lambda x, training=False: _softmax(np.asarray(model(x, training=False))),
        repeats=2,
        isolated=False,
    )
    assert report.passed and report.max_abs_diff < 1e-5 and report.accuracy is not None


def test_a_regressor_exports_prediction_with_its_task_and_no_class_names(tmp_path, regression):
    model = build_head(input_dim=8, outputs=1)
    record = export_onnx(model, tmp_path / "r.onnx", task=Task.REGRESSION)
    proto = onnx.load(str(tmp_path / "r.onnx"))
    assert [o.name for o in proto.graph.output] == [PREDICTION_NAME] and record.output_name == PREDICTION_NAME
    meta = read_metadata(proto)
    assert meta.task == {"task": "regression", "output": "values"} and meta.class_names == []
    assert meta.task_and_output() == (Task.REGRESSION, OutputKind.VALUES)
    report = validate(record, regression, reference=model, repeats=2, isolated=False)
    assert report.task is Task.REGRESSION and report.passed, report.summary()
    assert report.reference_errors.max_rel_error < 1e-5 and report.reference_errors.max_abs_error < 1e-3
    expected = float(np.sqrt(np.mean((np.asarray(model(regression.x_test)).ravel() - regression.y_test) ** 2)))
    assert report.rmse == pytest.approx(expected, rel=1e-4) and report.reference_rmse == pytest.approx(
        expected, rel=1e-4
    )
    assert report.tolerance == Tolerance(max_rel_diff=1e-4)
    assert "RMSE" in report.summary()


def test_regression_mismatches_are_all_collected_with_their_numbers(tmp_path, regression):
    model = build_head(input_dim=8, outputs=1)
    other = build_head(input_dim=8, outputs=1, seed=3)  # a different model as the "reference": every bound misses
    record = export_onnx(model, tmp_path / "r.onnx", task=Task.REGRESSION)
    tight = Tolerance(max_abs_diff=1e-6, max_rel_diff=1e-6, max_rmse_increase=0.0, min_agreement=0.9)
    report = validate(record, regression, reference=other, tolerance=tight, repeats=2, isolated=False, check=False)
    checks = {m.check for m in report.mismatches}
    assert {"max_abs_diff", "max_rel_diff"} <= checks
    assert all(isinstance(m.measured, float) and m.measured > 0 for m in report.mismatches)
    assert "min_agreement (a regressor has no classes)" in report.skipped


def test_a_reference_with_no_error_holds_the_file_to_its_rmse_in_the_targets_units(tmp_path, regression):
    """Targets that are the reference's own outputs: the RMSE increase is the file's RMSE (the budget's rule), not an
    infinite increase that refused every file, the float32 export included."""
    import dataclasses

    model = build_head(input_dim=8, outputs=1)
    own = dataclasses.replace(regression, y_test=np.asarray(model(regression.x_test)).reshape(-1))
    record = export_onnx(model, tmp_path / "r.onnx", task=Task.REGRESSION)
    report = validate(record, own, reference=model, repeats=2, isolated=False, check=False)
    assert report.passed, report.mismatches
    assert report.rmse < 1e-5
    report = validate(record, own, reference=model, tolerance=Tolerance(max_rmse_increase=0.0), repeats=2,
                      isolated=False, check=False)  # fmt: skip
    misses = [m.measured for m in report.mismatches if m.check == "rmse_increase"]
    assert misses == ([report.rmse] if report.rmse > 1e-12 else [])  # the file's RMSE itself, not inf


@pytest.mark.slow
def test_tflite_and_int8_variants_keep_the_outputs_of_their_kind(tmp_path, regression):
    from deploykit.data.dataset import load_dataset

    digits = load_dataset("digits")
    logits = build_head(outputs=10)
    flat = export_tflite(logits, tmp_path / "l.tflite", task=Task.CLASSIFICATION)
    runner = TfliteRunner(flat.path)
    assert runner.output_name == OUTPUT_NAME
    assert sorted(runner.interpreter.get_signature_list()["serving_default"]["outputs"]) == [LOGITS_NAME, OUTPUT_NAME]
    np.testing.assert_allclose(runner.predict(digits.x_test[:20]).sum(axis=1), 1.0, atol=1e-5)
    full = export_tflite(logits, tmp_path / "l8.tflite", "int8-full", representative_data=digits)
    assert (
        validate(
            full, digits, reference=lambda x, training=False: _softmax(np.asarray(logits(x))), repeats=2, isolated=False
        ).accuracy
        is not None
    )
    model = build_head(input_dim=8, outputs=1)
    for quant in ("int8-dynamic", "int8-static"):
        record = export_onnx(
            model, tmp_path / f"r_{quant}.onnx", quantization=quant, calibration_data=regression, task=Task.REGRESSION
        )
        assert OnnxRunner(record.path).output_name == PREDICTION_NAME
        report = validate(record, regression, reference=model, repeats=2, isolated=False)
        assert report.task is Task.REGRESSION and report.tolerance.max_rmse_increase == 0.05
    r_flat = export_tflite(
        model, tmp_path / "r8.tflite", "int8-full", representative_data=regression, task=Task.REGRESSION
    )
    assert TfliteRunner(r_flat.path).output_name == PREDICTION_NAME
    assert validate(r_flat, regression, reference=model, repeats=2, isolated=False).rmse is not None


def test_triton_labels_go_to_probabilities_and_a_regressor_has_none(tmp_path):
    from deploykit.export.triton import write_triton_repository

    export_onnx(build_head(outputs=3, input_dim=4), tmp_path / "l.onnx", task=Task.CLASSIFICATION)
    folder = write_triton_repository(tmp_path / "l.onnx", tmp_path / "repo", "logits")
    text = (folder / "config.pbtxt").read_text()
    block = text[text.index(f'name: "{OUTPUT_NAME}"') :]
    assert 'label_filename: "labels.txt"' in block.split("}")[0] and text.count("label_filename") == 1
    export_onnx(build_head(outputs=2, input_dim=4), tmp_path / "r.onnx", task=Task.REGRESSION)
    folder = write_triton_repository(tmp_path / "r.onnx", tmp_path / "repo", "reg", class_names=["a", "b"])
    text = (folder / "config.pbtxt").read_text()
    assert f'name: "{PREDICTION_NAME}"' in text and "dims: [ 2 ]" in text and "label_filename" not in text
    assert not (folder / "labels.txt").exists()


def test_a_softmax_model_meeting_regression_data_is_one_data_error(tmp_path, regression):
    from deploykit.export.bundle import export_bundle
    from tests.helpers import build_dense

    model = build_dense(input_dim=8, hidden=(4,), classes=1, bn=False, dropout=0)
    with pytest.raises(DataError, match="holds regression targets, but model .* ends in a softmax"):
        export_bundle(model, regression, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_and_validate_commands_on_a_regressor(tmp_path, capsys):
    from deploykit.cli.main import main
    from deploykit.io.models import save_model

    model = save_model(build_head(input_dim=10, outputs=1), tmp_path / "reg.keras")
    out = tmp_path / "out"
    code = main(
        [
            "export",
            str(model),
            "--data",
            "diabetes",
            "--formats",
            "onnx",
            "--quantize",
            "float32,int8-dynamic",
            "--triton",
            "--repeats",
            "2",
            "-q",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = (out / "validation.md").read_text()
    assert "Reference (source model) test RMSE" in table and "| RMSE | max abs error |" in table
    assert not (out / "triton" / "model" / "labels.txt").exists()
    assert read_metadata(out / "model.onnx").task == {"task": "regression", "output": "values"}
    code = main(
        [
            "validate",
            str(out / "model.onnx"),
            "--data",
            "diabetes",
            "--reference",
            str(model),
            "--repeats",
            "2",
            "-q",
            "--max-rel-diff",
            "1e-9",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "max_rel_diff" in captured.err  # the override is held, the miss named with its number
