"""The few-draws Bernoulli mask: standard ops only, the documented rate, independent positions and rows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploykit.errors import ConfigError
from deploykit.uncertainty.masks import MaskConfig, dropout_model, mask_model
from tests.uncertainty.support import session


def _keep(config: MaskConfig, rows: int, calls: int = 1) -> np.ndarray:
    sess = session(mask_model(config))
    x = np.ones((rows, config.width), np.float32)
    return np.concatenate([sess.run(["keep"], {"input": x})[0] for _ in range(calls)])


@pytest.mark.parametrize("opset", [13, 18])
def test_model_is_valid_standard_onnx(opset):
    proto = mask_model(MaskConfig(rate=0.2, width=10, opset=opset))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} == {""}


@pytest.mark.parametrize("rate,bits", [(0.2, 8), (0.5, 8), (0.1, 12), (0.0, 8)])
def test_rate_is_represented_within_half_a_step_and_realised(rate, bits):
    config = MaskConfig(rate=rate, width=784, bits=bits, seed=1)
    assert abs(config.represented_rate - rate) <= 2.0 ** -(bits + 1)
    keep = _keep(config, rows=200, calls=5)  # 784,000 bits
    dropped = 1 - keep.mean()
    se = np.sqrt(max(config.represented_rate * (1 - config.represented_rate), 1e-12) / keep.size)
    assert abs(dropped - config.represented_rate) <= 5 * se + 1e-12


def test_output_is_the_input_masked_and_rescaled():
    config = MaskConfig(rate=0.25, width=33, seed=2)  # 33 = 11 draws x 3: no slice; also try a ragged width below
    for width in (33, 34):
        cfg = MaskConfig(rate=0.25, width=width, seed=2)
        x = np.random.default_rng(0).normal(size=(7, width)).astype(np.float32)
        out, keep = session(mask_model(cfg)).run(["output", "keep"], {"input": x})
        assert keep.shape == x.shape
        np.testing.assert_allclose(out, x * keep / (1 - cfg.represented_rate), rtol=1e-6)
    assert config.per_draw == 3


def test_positions_and_rows_are_uncorrelated():
    config = MaskConfig(rate=0.2, width=96, seed=3)  # m = 32 draws per row, 3 fields each
    keep = _keep(config, rows=20000).astype(np.float64)
    m = 32
    centred = keep - keep.mean(0)
    sd = centred.std(0)

    def corr(a, b):
        return float((centred[:, a] * centred[:, b]).mean() / (sd[a] * sd[b]))

    limit = 5 / np.sqrt(len(keep))  # 5 standard errors of a correlation estimate
    same_draw = [corr(i, i + m) for i in range(m)] + [corr(i, i + 2 * m) for i in range(m)]  # fields of one draw
    neighbours = [corr(i, i + 1) for i in range(m - 1)]  # consecutive draws
    assert max(map(abs, same_draw)) < limit, same_draw
    assert max(map(abs, neighbours)) < limit, neighbours
    rows = keep.mean(1)
    lag1 = np.corrcoef(rows[:-1], rows[1:])[0, 1]  # row r and row r + 1
    assert abs(lag1) < limit


def test_calls_differ_and_a_seed_repeats_per_session():
    config = MaskConfig(rate=0.5, width=64, seed=4)
    x = np.ones((4, 64), np.float32)
    a, b = session(mask_model(config)), session(mask_model(config))
    first = a.run(["keep"], {"input": x})[0]
    assert np.array_equal(first, b.run(["keep"], {"input": x})[0])
    assert not np.array_equal(first, a.run(["keep"], {"input": x})[0])


def test_reference_dropout_model_runs():
    out, keep = session(dropout_model(0.2, 16, seed=1)).run(None, {"input": np.ones((3, 16), np.float32)})
    np.testing.assert_allclose(out, keep / 0.8, rtol=1e-6)


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="rate"):
        MaskConfig(rate=1.0, width=4)
    with pytest.raises(ConfigError, match="bits"):
        MaskConfig(rate=0.2, width=4, bits=4)
    with pytest.raises(ConfigError, match="opset"):
        MaskConfig(rate=0.2, width=4, opset=12)
