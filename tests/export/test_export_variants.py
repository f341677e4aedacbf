"""Every export variant from the trained fixture, run and validated in its real runtime (onnxruntime, LiteRT)."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import ValidationError
from deploykit.export import (
    ExportFormat,
    OnnxRunner,
    Precision,
    TfliteRunner,
    Tolerance,
    export_onnx,
    export_tflite,
    validate,
    write_triton_repository,
)
from deploykit.export.metadata import ModelMetadata, read_metadata

pytestmark = pytest.mark.slow  # every test reads the trained_model fixture (trains a model)

ONNX_VARIANTS = ["float32", "float16", "int8-dynamic", "int8-static"]
TFLITE_VARIANTS = ["float32", "float16", "int8-weights", "int8-full", "int8-io"]
META = ModelMetadata(steps=["train(test)"], reference_accuracy=0.5)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_model, digits):
    """name -> ExportRecord for every ONNX and TFLite variant (exported once for the module)."""
    out = tmp_path_factory.mktemp("variants")
    records = {}
    meta = ModelMetadata(
        class_names=list(digits.class_names), steps=list(META.steps), reference_accuracy=META.reference_accuracy
    )
    for q in ONNX_VARIANTS:
        records[f"onnx-{q}"] = export_onnx(
            trained_model, out / f"{q}.onnx", quantization=q, calibration_data=digits, metadata=meta
        )
    for q in TFLITE_VARIANTS:
        quant = "int8-full" if q == "int8-io" else q
        records[f"tflite-{q}"] = export_tflite(
            trained_model,
            out / f"{q}.tflite",
            quantization=quant,
            representative_data=digits,
            num_calibration=200,
            int8_io=q == "int8-io",
        )
    return records


@pytest.fixture(scope="module")
def reports(artifacts, trained_model, digits):
    return {name: validate(record, digits, trained_model, repeats=5) for name, record in artifacts.items()}


ALL = [f"onnx-{q}" for q in ONNX_VARIANTS] + [f"tflite-{q}" for q in TFLITE_VARIANTS]


@pytest.mark.parametrize("name", ALL)
def test_every_variant_meets_its_tolerance_in_its_runtime(name, reports, artifacts, digits):
    report, record = reports[name], artifacts[name]
    assert report.passed and not report.mismatches and not report.skipped
    assert report.samples == len(digits.x_test)
    assert report.reference_accuracy > 0.85
    assert report.accuracy >= report.reference_accuracy - 0.01
    assert report.agreement >= 0.95
    assert report.size_bytes == record.path.stat().st_size
    assert 0 < report.gzip_bytes < report.size_bytes
    assert report.latency_b1_ms > 0 and report.throughput_b256 > 0
    assert [t.batch for t in report.timings] == [1, 256]
    if record.precision is Precision.FLOAT32:
        assert report.max_abs_diff <= 1e-4
    elif record.precision is Precision.FLOAT16:
        assert report.agreement >= 0.995
        assert 0 < report.max_abs_diff < 1e-2  # really float16: not bit-equal, still close


def test_quantized_files_are_smaller(artifacts):
    for fmt in ("onnx", "tflite"):
        base = artifacts[f"{fmt}-float32"].size_bytes
        assert artifacts[f"{fmt}-float16"].size_bytes < 0.8 * base
    assert artifacts["tflite-int8-full"].size_bytes < 0.6 * artifacts["tflite-float32"].size_bytes
    assert artifacts["onnx-int8-dynamic"].size_bytes < 0.6 * artifacts["onnx-float32"].size_bytes


def test_int8_exports_record_their_preparation(artifacts):
    for name in ("onnx-int8-static", "onnx-int8-dynamic", "tflite-int8-full", "tflite-int8-weights"):
        record = artifacts[name]
        assert record.calibration_samples > 0
        assert any(step.startswith("fold(") for step in record.preparation)
    assert artifacts["tflite-int8-full"].calibration_samples == 200
    assert artifacts["onnx-float16"].preparation == [] and artifacts["onnx-float32"].calibration_samples == 0


@pytest.mark.parametrize("q", ONNX_VARIANTS)
def test_onnx_graph_is_checked_named_and_batch_dynamic(q, artifacts):
    import onnx

    proto = onnx.load(str(artifacts[f"onnx-{q}"].path))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "probabilities")
    float32 = onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.elem_type == float32 and out.type.tensor_type.elem_type == float32  # keep_io_types
    batch = inp.type.tensor_type.shape.dim[0]
    assert not batch.HasField("dim_value")
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [64]
    runner = OnnxRunner(artifacts[f"onnx-{q}"].path)
    for n in (1, 7, 300):
        assert runner.predict(np.zeros((n, 64), np.float32)).shape == (n, 10)


def test_float16_onnx_really_holds_float16_weights(artifacts):
    import onnx

    proto = onnx.load(str(artifacts["onnx-float16"].path))
    kinds = {t.data_type for t in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds


@pytest.mark.parametrize("q", ONNX_VARIANTS)
def test_onnx_metadata_round_trips(q, artifacts, digits):
    record = artifacts[f"onnx-{q}"]
    from_file = read_metadata(record.path)
    assert from_file == record.metadata
    runner = OnnxRunner(record.path)
    assert read_metadata(runner.session) == from_file
    assert from_file.class_names == list(digits.class_names)
    assert from_file.input_shape == [64]
    assert from_file.quantization == q  # the variant's one name, in the file too
    assert from_file.steps[0] == "train(test)" and "onnx(opset=17)" in from_file.steps
    assert from_file.reference_accuracy == META.reference_accuracy
    assert from_file.kind == "deterministic" and from_file.version
    assert from_file.sparsity == 0.0


@pytest.mark.parametrize("name", ALL)
def test_validate_on_a_bare_path_recognises_the_variant(name, artifacts, digits, trained_model):
    record = artifacts[name]
    report = validate(record.path, digits, trained_model, batch_sizes=(1,), repeats=2)
    assert report.quantization == record.quantization.value
    assert report.precision is record.precision
    assert report.passed


def test_tflite_io_signature_and_dynamic_batch(artifacts):
    for name in ("tflite-float32", "tflite-int8-full"):
        runner = TfliteRunner(artifacts[name].path)
        assert runner.input_shape == (64,) and runner.output_shape == (10,)
        assert runner.input_dtype == np.float32 and runner.input_quantization is None
        for n in (1, 5, 300, 1):
            assert runner.predict(np.zeros((n, 64), np.float32)).shape == (n, 10)


def test_int8_io_carries_scale_and_zero_point_and_validation_uses_them(artifacts, reports, digits):
    record = artifacts["tflite-int8-io"]
    assert record.input_dtype == "int8"
    scale, zero = record.input_quantization
    assert scale > 0 and -128 <= zero <= 127
    runner = TfliteRunner(record.path)
    assert runner.input_dtype == np.int8
    assert runner.input_quantization == record.input_quantization
    assert runner.output_quantization == record.output_quantization
    # feeding the raw floats as int8 without the stored scale would be nonsense; the runner quantizes them
    assert reports["tflite-int8-io"].accuracy >= reports["tflite-int8-io"].reference_accuracy - 0.01
    probs = runner.predict(digits.x_test[:50])
    assert probs.dtype == np.float32 and np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0, atol=0.05)


def test_speed_is_measured_for_both_batch_sizes(reports):
    for report in reports.values():
        b1, b256 = report.timings
        assert b1.per_second == pytest.approx(1e3 / b1.median_ms)
        assert b256.per_second == pytest.approx(256e3 / b256.median_ms)


def test_a_wrong_artifact_reports_every_missed_bound(tmp_path, digits, trained_model):
    """An untrained model's export checked against the trained reference: all three bounds miss, all reported."""
    from tests.helpers import build_dense

    untrained = build_dense(data=digits)
    record = export_onnx(untrained, tmp_path / "untrained.onnx")
    strict = Tolerance(max_abs_diff=1e-4, min_agreement=0.995, max_accuracy_drop=0.01)
    with pytest.raises(ValidationError) as info:
        validate(record, digits, trained_model, tolerance=strict, repeats=2)
    err = info.value
    assert {m.check for m in err.mismatches} == {"max_abs_diff", "agreement", "accuracy_drop"}
    assert err.report is not None and not err.report.passed
    assert "untrained.onnx failed validation" in str(err) and "\n" not in str(err)
    report = validate(record, digits, trained_model, tolerance=strict, repeats=2, check=False)
    assert len(report.mismatches) == 3


def test_without_a_reference_only_the_metadata_accuracy_is_checked(artifacts, digits):
    report = validate(artifacts["onnx-float32"].path, digits, repeats=2)
    assert report.agreement is None and report.max_abs_diff is None
    assert report.reference_accuracy == META.reference_accuracy
    assert report.skipped == ["max_abs_diff (no reference model)"]


_PARSE_TRITON_CONFIG = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
config = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))
"""


def _parse_triton_config(path):
    """Parse config.pbtxt with Triton's own schema, in a subprocess: tritonclient.grpc registers the
    'inference' protobuf package, which kserve (imported by the serve tests) registers too."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PARSE_TRITON_CONFIG, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_triton_repository_matches_the_model(tmp_path, artifacts, digits):
    import importlib.util

    if importlib.util.find_spec("tritonclient") is None:  # find_spec, not import: see _parse_triton_config
        pytest.skip("tritonclient ships Triton's config schema")
    for q in ("float32", "float16"):
        record = artifacts[f"onnx-{q}"]
        folder = write_triton_repository(record.path, tmp_path / "repo", f"digits_{q}", max_batch_size=64)
        assert folder == tmp_path / "repo" / f"digits_{q}"
        assert (folder / "1" / "model.onnx").read_bytes() == record.path.read_bytes()
        config = _parse_triton_config(folder / "config.pbtxt")
        assert config["name"] == f"digits_{q}" and config["platform"] == "onnxruntime_onnx"
        assert config["max_batch_size"] == 64
        (inp,), (out,) = config["input"], config["output"]
        runner = OnnxRunner(folder / "1" / "model.onnx")
        assert (inp["name"], out["name"]) == (runner.input_name, runner.output_name) == ("input", "probabilities")
        assert inp["data_type"] == out["data_type"] == "TYPE_FP32"
        assert inp["dims"] == ["64"] and out["dims"] == ["10"]
        assert out["label_filename"] == "labels.txt"
        assert (folder / "labels.txt").read_text().split() == list(digits.class_names)


def test_triton_repository_is_not_overwritten_without_force(tmp_path, artifacts):
    from deploykit.errors import UsageError

    record = artifacts["onnx-float32"]
    folder = write_triton_repository(record.path, tmp_path, "m")
    (folder / "config.pbtxt").write_text("keep me")
    with pytest.raises(UsageError, match="already exists"):
        write_triton_repository(record.path, tmp_path, "m")
    assert (folder / "config.pbtxt").read_text() == "keep me"
    write_triton_repository(record.path, tmp_path, "m", force=True)
    assert "onnxruntime_onnx" in (folder / "config.pbtxt").read_text()


def test_records_serialize(artifacts):
    import json

    for record in artifacts.values():
        data = json.loads(json.dumps(record.to_dict()))
        assert data["format"] in {f.value for f in ExportFormat}
        assert data["input_name"] == "input" and data["output_name"] == "probabilities"


def test_float16_onnx_looks_up_every_id_of_a_large_vocabulary_exactly(tmp_path):
    """keras.io's text classifiers embed 20,000 words: float16 holds no odd integer above 2,048, so ids reaching the
    lookup through float16 nodes are rounded (19,999 to 20,000, past the table). The nodes between the input and
    the lookup stay float32; the table itself is float16."""
    import onnx
    import onnxruntime as ort

    from deploykit.backend import keras
    from deploykit.export.onnx_quant import id_paths

    words = 20000
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Embedding(words, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    record = export_onnx(model, tmp_path / "text.onnx", quantization="float16")
    proto = onnx.load(str(record.path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 and t.dims[0] == words for t in proto.graph.initializer)
    assert id_paths(onnx.load(str(export_onnx(model, tmp_path / "text32.onnx").path)))  # the Cast to the ids
    ids = np.array([[words - 1, words - 3, 2049, 4097, 0, 1, 2, 3]] * 4, np.float32)
    ids[1:, 0] = [words - 2, 12345, 2051]
    got = ort.InferenceSession(str(record.path), providers=["CPUExecutionProvider"]).run(None, {"input": ids})[0]
    want = np.asarray(model(ids.astype(np.int64)))
    assert np.abs(got - want).max() < 1e-3
