"""What ``validate`` checks when there is no reference model to compare with.

Without ``--reference`` the float32 and float16 tolerances (max probability
difference, class agreement) have nothing to compare against, and a model with
zeroed weights would pass with nothing checked. These checks need only the
artifact, the data and what the file records about itself:

- the output contract (:data:`deploykit.core.contract.OUTPUTS`), before any value is read: the outputs it lists
  have its dtypes and ranks, and the output scored is one of the data's task (a regressor's ``prediction``
  is not scored against class labels);
- the shape contract: a classifier has as many outputs as the data has
  classes (data with 11 classes against a 10-output model is refused, not
  scored), a regressor as many as the targets have columns;
- finite outputs (no NaN or infinity);
- the test accuracy against the reference accuracy the file's own metadata
  records (deploykit writes it at export), within :data:`NO_REFERENCE_MAX_DROP`
  when the tolerance sets no accuracy bound of its own. The data may not be the
  split the file was measured on, hence a looser bound than the int8 one.
"""

from __future__ import annotations

import numpy as np

from deploykit.core.task import Task
from deploykit.errors import DataError, Mismatch

#: Largest accuracy drop against the file's recorded reference accuracy when no reference model is given.
NO_REFERENCE_MAX_DROP = 0.05


def check_declared_outputs(path, opened, task: Task) -> None:
    """Before running anything: an :class:`~deploykit.errors.OutputContractError` naming an output of another
    dtype or rank than the contract's, or a DataError when the output scored belongs to the other task."""
    from deploykit.core.contract import KIND_DETERMINISTIC, check_outputs, spec

    other = Task.REGRESSION if task is Task.CLASSIFICATION else Task.CLASSIFICATION
    main = opened.output_name
    if main and spec(main, task, KIND_DETERMINISTIC) is None and spec(main, other, KIND_DETERMINISTIC) is not None:
        raise DataError(
            f"artifact {path.name}: its output {main!r} is a {other.value} output, the data is a {task.value} "
            "split; validate it on data of its task (--task)"
        )
    check_outputs(f"artifact {path.name}", opened.outputs, KIND_DETERMINISTIC, task, required=False)


def check_output_contract(path, outputs: np.ndarray, data, output: str = "") -> None:
    """A DataError when the artifact's outputs cannot be scored against the data's labels (``output``: its name)."""
    named = f" output {output!r}" if output else ""
    if data.task is Task.REGRESSION:
        want = 1 if data.y_test.ndim == 1 else data.y_test.shape[1]
        got = 1 if outputs.ndim == 1 else int(np.prod(outputs.shape[1:]))
        if got != want:
            raise DataError(f"artifact {path.name}{named} predicts {got} values per row, the data has {want} targets")
        return
    classes = outputs.shape[1] if outputs.ndim == 2 else None
    labels = int(max(data.num_classes, int(np.max(data.y_test)) + 1 if len(data.y_test) else 0))
    if classes is None or (labels > classes and not (classes == 1 and labels == 2)):  # 1 output: a sigmoid head
        raise DataError(
            f"artifact {path.name}{named} outputs {classes or list(outputs.shape[1:])} classes, the data has "
            f"{labels}; validate it on data with the classes the model was trained on"
        )


def without_reference(report, outputs: np.ndarray, tolerance) -> list[Mismatch]:
    """The mismatches of the checks above (the contract is checked before) for a report made without a reference."""
    mismatches = []
    bad = int(outputs.size - np.count_nonzero(np.isfinite(outputs)))
    if bad:
        mismatches.append(Mismatch("finite_outputs", bad, "0", "NaN or infinite values among the outputs"))
    recorded = report.reference_accuracy
    if (
        report.task is Task.CLASSIFICATION
        and tolerance.max_accuracy_drop is None
        and recorded is not None
        and report.accuracy is not None
        and recorded - report.accuracy > NO_REFERENCE_MAX_DROP + 1e-12
    ):
        mismatches.append(
            Mismatch(
                "accuracy_drop",
                recorded - report.accuracy,
                f"<= {NO_REFERENCE_MAX_DROP:g}",
                f"accuracy {report.accuracy:.4f} vs {recorded:.4f} recorded in the file's metadata "
                "(no reference model)",
            )
        )
    return mismatches
