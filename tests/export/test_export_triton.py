"""Triton repository of every shipped model (the MC model included), checked with Triton's own config schema and
its rules against the ONNX graphs, and the KServe InferenceService manifest beside it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from deploykit.errors import UsageError
from deploykit.export import TritonConfig, export_variant, write_kserve_manifest, write_triton_models

pytestmark = pytest.mark.slow  # exports real models; the schema check runs in a subprocess

ONNX_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int32)": "TYPE_INT32",
}

_PARSE = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
out = {}
for path in sys.argv[1:]:
    config = text_format.Parse(open(path).read(), model_config_pb2.ModelConfig())
    out[path] = json_format.MessageToDict(config, preserving_proto_field_name=True)
print(json.dumps(out))
"""


def parse_configs(paths) -> dict:
    """Parse config.pbtxt files with Triton's schema, in a subprocess: tritonclient.grpc registers the
    'inference' protobuf package, which kserve (imported by the serve tests) registers too."""
    if importlib.util.find_spec("tritonclient") is None:  # find_spec, not import: see above
        pytest.skip("tritonclient ships Triton's config schema")
    done = subprocess.run([sys.executable, "-c", _PARSE, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {k: v for k, v in json.loads(done.stdout).items()}


def check_triton_rules(folder, config: dict, triton: TritonConfig) -> None:
    """Triton's rules for a batched onnxruntime model, checked against the ONNX graph in ``folder/1``."""
    import onnx
    import onnxruntime as ort

    model = folder / "1" / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    proto = onnx.load(str(model))
    initializers = {t.name for t in proto.graph.initializer}
    assert config["name"] == folder.name and config["platform"] == "onnxruntime_onnx"
    assert int(config["max_batch_size"]) == triton.max_batch_size > 0
    (group,) = config["instance_group"]
    assert group["kind"] == f"KIND_{triton.instance_kind.value.upper()}" and group["count"] == triton.instances
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == triton.max_queue_delay_us
    graph = {v.name: v for v in [*session.get_inputs(), *session.get_outputs()]}
    required = [v.name for v in proto.graph.input if v.name not in initializers]
    assert [t["name"] for t in config["input"]] == required  # every input without a default, nothing else
    batched = [o.name for o in session.get_outputs() if o.name != "sample_probabilities"]
    assert [t["name"] for t in config["output"]] == batched
    for tensor in [*config["input"], *config["output"]]:
        onnx_value = graph[tensor["name"]]
        assert tensor["data_type"] == ONNX_TYPES[onnx_value.type]
        dims = [int(d) for d in tensor["dims"]]
        model_dims = [d if isinstance(d, int) else -1 for d in onnx_value.shape[1:]]  # the batch axis is Triton's
        assert dims, "a batched model's tensors need at least one dim"
        if "reshape" in tensor:  # Triton presents dims; the model sees the reshape
            assert [int(d) for d in tensor["reshape"].get("shape", [])] == model_dims
            assert int(np.prod(dims)) == int(np.prod(model_dims or [1]))
        else:
            assert dims == model_dims
    labels = [t for t in config["output"] if "label_filename" in t]
    for tensor in labels:
        lines = (folder / tensor["label_filename"]).read_text().split()
        assert [len(lines)] == [int(d) for d in tensor["dims"]]


@pytest.fixture(scope="module")
def repository(tmp_path_factory, trained_model, digits):
    from deploykit.uncertainty import export_mc_onnx

    out = tmp_path_factory.mktemp("triton")
    files = [
        export_variant(trained_model, "onnx", q, out / f"model_{q}.onnx", digits).path
        for q in ("float32", "float16", "int8-dynamic", "int8-static")
    ]
    files.append(export_mc_onnx(trained_model, out / "model_mc.onnx", samples=5).path)
    triton = TritonConfig(max_batch_size=64, instance_kind="gpu", instances=2, storage_uri="gs://bucket/models/triton")
    names = write_triton_models(files, out / "triton", triton, class_names=list(digits.class_names))
    return out, names, triton


def test_every_model_passes_tritons_schema_and_rules(repository):
    out, names, triton = repository
    assert names == ["model_float32", "model_float16", "model_int8-dynamic", "model_int8-static", "model_mc"]
    folders = [out / "triton" / n for n in names]
    configs = parse_configs([f / "config.pbtxt" for f in folders])
    for folder in folders:
        served, artifact = (folder / "1" / "model.onnx").read_bytes(), (out / f"{folder.name}.onnx").read_bytes()
        if folder.name == "model_mc":  # its optional `samples` input becomes an empty Optional: the default applies
            _assert_same_but_the_optional_input(onnx.load_from_string(served), onnx.load_from_string(artifact))
        else:
            assert served == artifact  # copied byte for byte
        check_triton_rules(folder, configs[str(folder / "config.pbtxt")], triton)


def _assert_same_but_the_optional_input(served, artifact):
    assert [i.name for i in artifact.graph.input] == ["input", "samples"] and artifact.graph.input[1].type.HasField(
        "optional_type"
    )
    assert [i.name for i in served.graph.input] == ["input"]
    added = served.graph.node[0]
    assert (added.op_type, list(added.input), list(added.output)) == ("Optional", [], ["samples"])
    assert list(served.graph.node[1:]) == list(artifact.graph.node)
    assert list(served.graph.initializer) == list(artifact.graph.initializer)
    assert list(served.graph.output) == list(artifact.graph.output)


def test_mc_per_row_scalars_are_dims_1_reshaped_to_scalars(repository):
    out, _, _ = repository
    config = parse_configs([out / "triton" / "model_mc" / "config.pbtxt"])[
        str(out / "triton" / "model_mc" / "config.pbtxt")
    ]
    outputs = {t["name"]: t for t in config["output"]}
    for name in ("predictive_entropy", "mutual_information", "predicted_class"):
        assert outputs[name]["dims"] == ["1"] and outputs[name]["reshape"] == {}  # shape: [ ] (empty, so omitted)
    assert outputs["mean"]["dims"] == ["10"] and "reshape" not in outputs["mean"]
    assert outputs["mean"]["label_filename"] == "labels.txt"
    assert [t["name"] for t in config["input"]] == ["input"]  # `samples` keeps its default in Triton


def test_kserve_manifest_deploys_the_repository(repository):
    import yaml

    out, _, triton = repository
    manifest = yaml.safe_load((out / "kserve.yaml").read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == triton.service_name
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "gs://bucket/models/triton"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"  # instance_kind gpu


def test_kserve_manifest_defaults_to_a_storage_uri_parameter(tmp_path):
    import yaml

    path = write_kserve_manifest(tmp_path / "kserve.yaml", "digits-classifier")
    model = yaml.safe_load(path.read_text())["spec"]["predictor"]["model"]
    assert model["storageUri"] == "${STORAGE_URI}" and "resources" not in model
    with pytest.raises(UsageError, match="DNS label"):
        write_kserve_manifest(tmp_path / "bad.yaml", "Digits_Classifier")
    assert not (tmp_path / "bad.yaml").exists()


def test_optimize_triton_serves_every_shipped_model_including_mc(tmp_path, trained_model, capsys):
    from deploykit.cli.main import main
    from deploykit.io.models import save_model

    model = save_model(trained_model, tmp_path / "m.keras")
    out = tmp_path / "run"
    code = main(
        [
            "optimize",
            str(model),
            "--data",
            "digits",
            "--out",
            str(out),
            "--no-sparsity",
            "--formats",
            "onnx",
            "--quantize",
            "float32,int8-dynamic",
            "--samples",
            "5",
            "--triton",
            "--instances",
            "2",
            "--max-batch-size",
            "32",
            "--max-accuracy-drop",
            "0.05",
            "--max-nll-increase",  # its 5-sample MC mean is above the user's model's NLL by more than 2 %
            "1.0",
            "--mc-seed",
            "0",
            "--latency-repeats",  # no latency is read here
            "2",
        ]
    )  # the subject is Triton
    assert code == 0, capsys.readouterr().err
    shipped = sorted(p.stem for p in out.glob("*.onnx"))
    assert shipped == ["model", "model_int8-dynamic", "model_mc"]
    # every shipped model, and the objective's recommended one (a copy of the fastest shipped ONNX) under one name
    assert sorted(p.name for p in (out / "triton").iterdir()) == [*shipped, "recommended"]
    recommended = (out / "triton" / "recommended" / "1" / "model.onnx").read_bytes()
    assert any(recommended == (out / f"{n}.onnx").read_bytes() for n in shipped if n != "model_mc")
    folders = [out / "triton" / n for n in (*shipped, "recommended")]
    configs = parse_configs([f / "config.pbtxt" for f in folders])
    triton = TritonConfig(max_batch_size=32, instances=2)
    for folder in folders:
        check_triton_rules(folder, configs[str(folder / "config.pbtxt")], triton)
    assert (out / "kserve.yaml").is_file()
    report = (out / "report.md").read_text()
    assert "| quantization |" in report and "| model_int8-dynamic.onnx | onnx (onnxruntime) | int8-dynamic |" in report
