"""A served model's task, and the interval-width abstain rule the server applies itself (no process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.core.contract import INTERVAL_Z, Measure
from deploykit.core.task import Task
from deploykit.errors import ModelLoadError


def test_task_from_metadata_else_from_outputs():
    from deploykit.serve.models import _task

    assert _task({"deploykit.task": {"task": "regression", "output": "values"}}, ["mean", "std"]) is Task.REGRESSION
    assert _task({"deploykit.task": "classification"}, ["logits", "probabilities"]) is Task.CLASSIFICATION
    assert _task({}, ["prediction"]) is Task.REGRESSION
    assert _task({}, ["mean", "std", "abstain"]) is Task.REGRESSION
    assert (
        _task({}, ["mean", "std", "predictive_entropy", "mutual_information", "predicted_class"]) is Task.CLASSIFICATION
    )
    assert _task({}, ["logits", "probabilities"]) is Task.CLASSIFICATION


def test_interval_width_abstain_computed_by_the_server():
    from deploykit.serve.decision import abstain_of

    record = json.dumps({"measure": "interval_width", "threshold": 2.0})
    decision = abstain_of("m.onnx", {"deploykit.selective": record}, ["mean", "std"])
    assert decision.computed and decision.measure is Measure.INTERVAL_WIDTH
    std = np.array([[0.1, 0.2], [1.0, 0.8], [0.5, 0.6]], np.float32)
    assert (
        decision.compute({"mean": np.zeros_like(std), "std": std}).tolist()
        == (2 * INTERVAL_Z * std.mean(axis=1) > 2.0).tolist()
        == [False, True, True]
    )
    with pytest.raises(ModelLoadError, match="none of \\['std'\\]"):
        abstain_of("m.onnx", {"deploykit.selective": record}, ["prediction"])
