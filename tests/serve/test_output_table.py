"""deploykit.core.contract.OUTPUTS: the one table of served outputs, what the README shows and what readers check.

Light: no TensorFlow (the ONNX round trip uses onnx's helpers only).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploykit.core import contract
from deploykit.core.contract import ModelKind, check_outputs
from deploykit.errors import OutputContractError

README = Path(__file__).resolve().parents[2] / "README.md"
MC, ENSEMBLE, DET = ModelKind.MC_DROPOUT, ModelKind.DEEP_ENSEMBLE, ModelKind.DETERMINISTIC
#: An MC classifier's outputs as a file of an older deploykit declares them: the required ones only.
OLDER_MC = {
    "mean": ("float32", ["N", 10]),
    "std": ("float32", ["N", 10]),
    "predictive_entropy": ("float32", ["N"]),
    "mutual_information": ("float32", ["N"]),
    "predicted_class": ("int64", ["N"]),
}


def test_the_readme_table_is_the_one_generated_from_the_contract():
    """The README's served-outputs table is contract.markdown_table(), line for line (regenerate it from there)."""
    text = README.read_text(encoding="utf-8")
    header = contract.markdown_table().splitlines()[0]
    assert header in text, "the README lost its served-outputs table"
    start = text.index(header)
    table = re.match(r"(?:\|.*\n)+", text[start:]).group(0)
    assert table == contract.markdown_table()


def test_every_row_names_its_axes_and_dtype():
    for row in contract.OUTPUTS:
        assert row.dtype in contract.ORT_TYPES, row
        assert set(row.shape) <= contract.AXES.keys(), row
        assert "N" in row.shape and row.description, row


def test_the_derived_names_keep_their_values():
    """Older names are views of the table: same values as the literal tuples they replaced."""
    assert contract.OUTPUT_NAMES == ("mean", "std", "predictive_entropy", "mutual_information", "predicted_class")
    assert contract.REGRESSION_OUTPUT_NAMES == ("mean", "std")
    assert contract.DETERMINISTIC_OUTPUTS == {
        "probabilities": ("probabilities",),
        "logits": ("logits", "probabilities"),
        "values": ("prediction",),
        "sigmoid": ("probabilities",),
        "binary_logits": ("logits", "probabilities"),
    }
    assert set(contract.SAMPLE_FIRST_OUTPUTS) == {
        "sample_probabilities",
        "member_probabilities",
        "sample_predictions",
        "member_predictions",
    }
    assert contract.PER_SAMPLE_OUTPUTS == ("sample_probabilities", "sample_predictions")


def test_an_older_file_without_the_optional_outputs_passes():
    check_outputs("old.onnx", OLDER_MC, MC, "classification", {"classes": 10})
    check_outputs("old.onnx", {**OLDER_MC, "something_newer": ("float32", ["N", 3])}, MC, "classification")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"predicted_class": None}, "needs the output 'predicted_class'"),
        ({"predicted_class": ("float32", ["N"])}, "output 'predicted_class' is float32, the contract says int64"),
        ({"mean": ("float32", ["N"])}, r"output 'mean' has shape \['N'\], the contract says \['N', 10\]"),
        ({"std": ("float32", ["N", 9])}, "output 'std' has 9 entries on axis 1 \\(classes\\), the contract says 10"),
        ({"abstain": ("float32", ["N"])}, "output 'abstain' is float32, the contract says bool"),
    ],
)
def test_a_broken_output_is_named(change, match):
    found = {k: v for k, v in {**OLDER_MC, **change}.items() if v is not None}
    with pytest.raises(OutputContractError, match=match):
        check_outputs("model.onnx", found, MC, "classification", {"classes": 10})


def test_a_deterministic_file_needs_the_outputs_of_its_output_kind():
    found = {"probabilities": ("float32", ["N", 3])}
    check_outputs("m.onnx", found, DET, "classification", output_kind="probabilities")
    with pytest.raises(OutputContractError, match="needs the output 'logits'"):
        check_outputs("m.onnx", found, DET, "classification", output_kind="logits")
    regression = {"mean": ("float32", ["N", 2]), "std": ("float32", ["N", 2])}
    check_outputs("r.onnx", regression, ENSEMBLE, "regression", {"targets": 2})


def test_the_task_of_a_file():
    assert contract.file_task({"task": "regression", "output": "values"}, ["mean", "std"]) == "regression"
    assert contract.file_task(None, ["prediction"]) == "regression"
    assert contract.file_task(None, ["mean", "std"]) == "regression"
    assert contract.file_task(None, list(OLDER_MC)) == "classification"
    assert contract.file_task(None, ["probabilities"]) == "classification"


@pytest.mark.parametrize("row", contract.OUTPUTS, ids=lambda r: f"{r.name}-{r.task}")
def test_each_row_declared_in_onnx_reads_back_as_itself(row):
    """The graph builders' declaration (export.contract_onnx.output_info) is what the readers check."""
    from deploykit.export.contract_onnx import declared, output_info

    info = output_info(row.name, row.task, row.kinds[0], 4)
    found = declared([info])
    assert found[row.name][0] == row.dtype
    sizes = {"classes": 4, "targets": 4, "units": 4}
    check_outputs("m.onnx", found, row.kinds[0], row.task, sizes, required=False)
