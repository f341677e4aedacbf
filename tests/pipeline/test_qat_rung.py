"""Issue 22: the quantization-aware rung of the int8 search. It comes right after post-training int8 (and its
calibration try) missed, only for TFLite full integer, and nothing of it runs when post-training int8 passes."""

from __future__ import annotations

import pytest

from deploykit.errors import ConversionError
from deploykit.export.config import ExportFormat, QuantConfig, Quantization
from deploykit.export.qat import NOTE, bounded
from deploykit.pipeline.int8_search import search_int8
from deploykit.pipeline.records import Verdict
from deploykit.sparsity.config import PruneConfig
from tests.pipeline.test_int8_search import LAYERS, _row

TUNING = bounded(PruneConfig(epochs=5, distill=True))


def _tflite(**options):
    from deploykit.pipeline.int8_search import int8_variants

    return int8_variants(ExportFormat.TFLITE, Quantization.INT8_FULL, QuantConfig(), LAYERS, set(), **options)


def test_the_rung_follows_post_training_int8_and_comes_before_the_tries_that_cost_size():
    tflite = _tflite(quantization_aware=TUNING)
    assert [v.note for v in tflite] == [
        "",
        "4x calibration",
        NOTE,
        "inputs standardized in float",
        "inputs standardized in float, constants as measured",
        "dense, dense_2 kept in float",
        "per-layer fallback",
        "fallback",
    ]
    rung = tflite[2]
    assert rung.tuning is TUNING and rung.quantization is Quantization.INT8_FULL and not rung.knobs.exclude
    assert rung.describe().endswith(
        "int8-full, ranges trained (300 calibration samples for the rest), quantization-aware (sparsity kept)"
    )
    assert [v.tuning for v in tflite].count(None) == len(tflite) - 1


def test_the_rung_is_only_for_tflite_full_integer_and_not_when_switched_off_or_on_raw_features():
    from deploykit.pipeline.int8_search import int8_variants

    assert all(v.tuning is None for v in _tflite())  # quantization_aware off
    assert all(v.tuning is None for v in _tflite(quantization_aware=TUNING, raw_scales=True))
    onnx = int8_variants(
        ExportFormat.ONNX, Quantization.INT8_STATIC, QuantConfig(), LAYERS, set(), quantization_aware=TUNING
    )
    assert all(v.tuning is None for v in onnx)


def _search(passing: set[int], refuse: int | None = None):
    """The search over the TFLite tries with the rung, ``passing`` the tries (by index) whose row ships; the
    exports made, in order."""
    variants = _tflite(quantization_aware=TUNING)
    made = []

    def make(variant):
        made.append(variant)
        if refuse is not None and variants.index(variant) == refuse:
            raise ConversionError("quantization-aware fine-tune skipped: layer 'x' (Custom) is not supported")
        return variants.index(variant)

    def measure(index):
        return _row(0.9, Verdict.PASS if index in passing else Verdict.REJECTED)

    return variants, made, search_int8(variants, make, measure)


def test_nothing_of_the_rung_runs_when_post_training_int8_passes():
    _, made, attempts = _search({0, 2})
    assert len(made) == 1 and made[0].tuning is None and attempts[0].passed


def test_the_rung_runs_after_a_miss_and_ships_when_it_passes():
    variants, made, attempts = _search({2})
    assert made == variants[:3] and made[-1].tuning is TUNING and attempts[-1].passed


def test_a_refused_model_is_that_tries_failure_with_its_reason_and_the_search_goes_on():
    variants, made, attempts = _search({3}, refuse=2)
    assert made == variants[:4]
    assert attempts[2].row is None and "not supported" in attempts[2].error
    assert attempts[-1].passed and attempts[-1].variant.note == "inputs standardized in float"


@pytest.mark.parametrize("value", [False, True])
def test_the_option_from_the_api_and_toml(value):
    from deploykit.pipeline.config import OptimizeConfig

    assert OptimizeConfig().export.quantization_aware is True
    assert OptimizeConfig().with_options(quantization_aware=value).export.quantization_aware is value
    assert OptimizeConfig.from_dict({"export": {"quantization_aware": value}}).export.quantization_aware is value


def test_a_time_budget_counts_the_fine_tune_and_can_leave_the_rung_out():
    """40 s left: a post-training try (10 s export) fits, the rung (10 s + 2 epochs x 2 x 15 s) does not."""
    import time
    from types import SimpleNamespace

    from deploykit.pipeline.budget import Costs, Plan
    from deploykit.pipeline.export_steps import _fits_plan

    costs = Costs(epoch=15.0, trace=1.0, evaluation=1.0, export=10.0, export_measured=True)
    plan = Plan(budget=100.0, start=time.monotonic() - 60.0, costs=costs, search=False)
    plan.measured["int8-static"] = 10.0
    fits = _fits_plan(SimpleNamespace(plan=plan))
    tries = _tflite(quantization_aware=bounded(PruneConfig(epochs=5)))
    assert fits(tries[1]) and not fits(tries[2])


def test_the_rung_distils_from_the_original_model_as_the_magnitude_search_does(digits):
    from types import SimpleNamespace

    import numpy as np

    from deploykit.core.evaluate import outputs
    from deploykit.pipeline.export_steps import _taught
    from tests.helpers import build_dense

    original = build_dense(bn=False, dropout=0.0)
    tries = _tflite(quantization_aware=TUNING)
    ctx = SimpleNamespace(original=original, data=digits)
    assert _taught(tries[0], ctx) is tries[0]  # post-training tries: nothing computed
    taught = _taught(tries[2], ctx)
    assert taught.tuning.config == TUNING.config and tries[2].tuning.teacher is None
    np.testing.assert_allclose(taught.tuning.teacher.val, outputs(original, digits.x_val), atol=1e-6)
    labels_only = _tflite(quantization_aware=bounded(PruneConfig(distill=False)))[2]
    assert _taught(labels_only, ctx) is labels_only
