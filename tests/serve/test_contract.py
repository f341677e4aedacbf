"""deploykit.core.contract: the one home of the tensor and metadata names, light enough for the server to import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploykit.core import contract

HEAVY = ("numpy", "onnx", "onnxruntime", "tensorflow", "tf_keras", "keras", "tf2onnx", "kserve")


def test_the_contract_imports_nothing_heavy():
    """Importing it loads no numerical, ONNX, TensorFlow or serving package (a fresh interpreter)."""
    loaded = f"sorted(m for m in {HEAVY!r} if m in sys.modules)"
    code = f"import sys, json, deploykit.core.contract; print(json.dumps({loaded}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    "module, names",
    [
        ("deploykit.export.convert", ["INPUT_NAME", "OUTPUT_NAME"]),
        ("deploykit.export.metadata", ["KIND_DETERMINISTIC"]),
        ("deploykit.uncertainty.mc_graph", ["SAMPLES_NAME", "SAMPLES_OUTPUT"]),
        ("deploykit.uncertainty.ensemble", ["KIND_ENSEMBLE", "MEMBERS_OUTPUT", "file_task"]),
        ("deploykit.uncertainty.selective", ["ABSTAIN_OUTPUT", "OUTPUT_NAMES"]),
        ("deploykit.uncertainty.measures", ["Measure"]),
        (
            "deploykit.serve.models",
            ["SAMPLES_NAME", "PER_SAMPLE_OUTPUTS", "ABSTAIN_OUTPUT", "description", "check_outputs"],
        ),
    ],
)
def test_every_module_uses_the_contract_objects(module, names):
    """Not copies that happen to be equal: the very objects of deploykit.core.contract."""
    import importlib

    loaded = importlib.import_module(module)
    for name in names:
        assert getattr(loaded, name) is getattr(contract, name), f"{module}.{name}"


def test_metadata_keys_are_the_contract_ones():
    from deploykit.export import metadata
    from deploykit.uncertainty import ensemble, selective, temperature

    assert metadata.PREFIX is contract.METADATA_PREFIX
    assert selective.METADATA_KEY is contract.SELECTIVE_KEY == "deploykit.selective"
    assert temperature.METADATA_KEY is contract.TEMPERATURE_KEY == "deploykit.temperature"
    assert ensemble.METADATA_KEY is contract.ENSEMBLE_KEY == "deploykit.ensemble"
    assert selective.RULE is contract.ABSTAIN_RULE


def test_model_kinds_are_written_as_their_values():
    """The kind is an enum in code and its plain value in the JSON metadata; a plain string read back compares equal."""
    import onnx

    from deploykit.export.metadata import ModelMetadata, read_metadata, write_metadata

    for kind in contract.ModelKind:
        proto = onnx.ModelProto()
        write_metadata(proto, ModelMetadata(kind=kind))
        assert {p.key: p.value for p in proto.metadata_props}["deploykit.kind"] == json.dumps(kind.value)
        read = read_metadata(proto).kind
        assert read == kind and contract.ModelKind(read) is kind and f"{kind}" == kind.value


def test_every_output_name_has_a_glossary_entry():
    names = [
        contract.OUTPUT_NAME,
        contract.LOGITS_NAME,
        contract.PREDICTION_NAME,
        *contract.OUTPUT_NAMES,
        *contract.SAMPLE_FIRST_OUTPUTS,
        contract.ABSTAIN_OUTPUT,
        *contract.CONFORMAL_OUTPUTS,
    ]
    assert sorted(contract.GLOSSARY) == sorted(names)
    assert sorted(contract.REGRESSION_GLOSSARY) == sorted(contract.REGRESSION_OUTPUT_NAMES)
