"""What the pipeline does with models that allow less: no BatchNorm, no dropout, SELU + AlphaDropout."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.pipeline import OptimizeConfig, Status, Verdict, optimize
from deploykit.pipeline.tables import ValidateStep
from tests.helpers import build_dense

pytestmark = pytest.mark.slow  # each test trains a model, then runs the whole pipeline

FAST = OptimizeConfig(validate=ValidateStep(latency_repeats=2))


def _trained(digits, epochs=8, **kwargs):
    from deploykit.backend import keras, set_seed

    set_seed(1)
    model = build_dense(**kwargs)
    model.compile(optimizer=keras.optimizers.Nadam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def _steps(result):
    return {s.step: s for s in result.steps}


def test_no_batchnorm_and_no_standardization_nothing_to_fold(digits, tmp_path):
    model = _trained(digits, bn=False)
    result = optimize(
        model, digits, config=FAST, out_dir=tmp_path / "out", sparsity="none", formats="onnx", quantize="float32"
    )
    fold = _steps(result)["fold"]
    assert fold.status is Status.DONE and fold.reason.startswith("nothing to fold")
    assert fold.after.params == fold.before.params
    assert _steps(result)["mc dropout"].status is Status.DONE
    assert result.artifact("model.onnx").verdict is Verdict.PASS


def test_no_dropout_skips_mc_with_the_reason(digits, tmp_path):
    model = _trained(digits, dropout=0.0, data=digits)
    result = optimize(
        model, digits, config=FAST, out_dir=tmp_path / "out", sparsity="none", formats="tflite", quantize="float32"
    )
    mc = _steps(result)["mc dropout"]
    assert mc.status is Status.SKIPPED and "no Dropout" in mc.reason
    assert "model_mc.onnx" not in {r.file for r in result.artifacts}
    assert not (result.out_dir / "model_mc.onnx").exists() and not (result.out_dir / "reliability.png").exists()
    assert "## Skipped steps" in (result.out_dir / "report.md").read_text()
    assert _steps(result)["fold"].detail.changed  # typed until the report is written


def test_selu_with_alpha_dropout(digits, tmp_path):
    model = _trained(digits, selu=True, data=digits)
    result = optimize(
        model,
        digits,
        config=FAST,
        out_dir=tmp_path / "out",
        sparsity="none",
        formats="onnx",
        quantize="float32,int8-dynamic",
        samples=20,
        mc_seed=1,
    )
    steps = _steps(result)
    assert [f.kind for f in steps["fold"].detail.folded] == ["Normalization"]
    assert steps["compact"].status is Status.DONE
    mc = result.artifact("model_mc.onnx")
    assert mc.verdict is Verdict.PASS and "AlphaDropout" in steps["mc dropout"].reason
    assert result.report["mc"]["mc"]["accuracy"] == pytest.approx(mc.accuracy)
    for name in ("model.onnx", "model_int8-dynamic.onnx"):
        assert result.artifact(name).verdict is Verdict.PASS
    assert np.isfinite(result.artifact("model_int8-dynamic.onnx").latency_b1_ms)


def test_batchnorm_before_a_dropout_stays_when_mc_is_built(digits, tmp_path):
    """Dense(elu) -> BN -> Dropout: folding forward past the Dropout would change MC sampling."""
    model = _trained(digits, data=digits)  # two such blocks
    with_mc = optimize(
        model, digits, config=FAST, out_dir=tmp_path / "mc", sparsity="none", export=False, compact=False, samples=30
    )
    fold = _steps(with_mc)["fold"]
    assert [u.kind for u in fold.detail.unfolded] == ["BatchNormalization", "BatchNormalization"]
    assert all("MC Dropout" in u.reason for u in fold.detail.unfolded)
    without_mc = optimize(
        model, digits, config=FAST, out_dir=tmp_path / "plain", sparsity="none", export=False, compact=False, mc=False
    )
    assert _steps(without_mc)["fold"].detail.unfolded == []
