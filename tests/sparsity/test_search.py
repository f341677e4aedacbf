"""The accuracy-budgeted sparsity search, per-layer allocation from sensitivity, and distillation."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from deploykit.errors import ConfigError
from deploykit.sparsity import PruneConfig, SearchConfig
from deploykit.sparsity.search import LayerSensitivity, allocate, protected_levels


def _sens(name, weights, drops):
    return LayerSensitivity(name, weights, [0.5, 0.7, 0.8, 0.9, 0.95, 0.98], drops)


def test_allocation_meets_the_target_and_gives_the_robust_layer_more():
    robust = _sens("big", 3000, [0.0, 0.0, 0.01, 0.02, 0.05, 0.2])
    fragile = _sens("small", 1000, [0.02, 0.05, 0.1, 0.2, 0.4, 0.6])
    targets = allocate([robust, fragile], 0.8)
    mean = (3000 * targets["big"] + 1000 * targets["small"]) / 4000
    assert mean == pytest.approx(0.8, abs=0.01)
    assert targets["big"] > 0.8 > targets["small"]
    assert max(targets.values()) <= 0.98


def test_allocation_is_uniform_when_nothing_tells_the_layers_apart():
    flat = [_sens("a", 100, [0.0] * 6), _sens("b", 300, [0.0] * 6)]
    assert allocate(flat, 0.9) == {"a": 0.9, "b": 0.9}


def test_search_config_validates_and_orders_targets():
    assert SearchConfig(targets=(0.5, 0.9, 0.8)).targets == (0.9, 0.8, 0.5)
    for bad in ({"targets": ()}, {"targets": (1.2,)}, {"targets": (0.0,)}, {"min_layer_weights": -1}, {"enabled": 1}):
        with pytest.raises(ConfigError):
            SearchConfig(**bad)
    assert SearchConfig.from_dict(SearchConfig().to_dict()) == SearchConfig()


def test_distillation_knobs_validate_and_round_trip():
    config = PruneConfig(distill=True, temperature=2, alpha=0.25)
    assert config.temperature == 2.0 and PruneConfig.from_dict(config.to_dict()) == config
    for bad in ({"temperature": 0.0}, {"alpha": 1.5}, {"distill": "yes"}):
        with pytest.raises(ConfigError):
            PruneConfig(**bad)


def test_distillation_loss_is_cross_entropy_at_alpha_zero_and_zero_on_the_teacher():
    from deploykit.backend import tf
    from deploykit.sparsity.tuning import _soften, distillation_loss

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=8).astype(np.float32)
    labels = rng.integers(0, 5, size=8)
    packed = np.concatenate([labels.reshape(-1, 1).astype(np.float32), _soften(probs, 3.0)], axis=1)
    hard = distillation_loss(False, 3.0, 0.0)(tf.constant(packed), tf.constant(probs)).numpy()
    np.testing.assert_allclose(hard, -np.log(probs[np.arange(8), labels]), rtol=1e-5)
    soft = distillation_loss(False, 3.0, 1.0)(tf.constant(packed), tf.constant(probs)).numpy()
    np.testing.assert_allclose(soft, 0.0, atol=1e-5)  # a student equal to its teacher has nothing to learn
    other = rng.dirichlet(np.ones(5), size=8).astype(np.float32)
    assert (distillation_loss(False, 3.0, 1.0)(tf.constant(packed), tf.constant(other)).numpy() > 1e-4).all()


def test_tuning_no_longer_imports_the_report_module():
    """sparsity/report.py uses tuning (rebuild); tuning must not use report back (no import cycle)."""
    from deploykit.sparsity import tuning

    tree = ast.parse(inspect.getsource(tuning))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "deploykit.sparsity.report" not in imported


@pytest.mark.slow
def test_search_keeps_the_highest_target_within_the_budget(trained_model, digits):
    from deploykit.core.evaluate import accuracy
    from deploykit.sparsity import search_sparsity

    lines: list[str] = []
    config = SearchConfig(targets=(0.95, 0.5), min_layer_weights=1100, prune_protected=False)
    model, report = search_sparsity(
        trained_model,
        digits,
        0.03,
        config=config,
        prune_config=PruneConfig(epochs=4, distill=True),
        progress=lines.append,
    )
    original = accuracy(trained_model, digits.x_val, digits.y_val)  # the search decides on validation
    first, second, output = [
        l.name for l in trained_model.layers if type(l).__name__ == "Dense"
    ]  # 2048, 1024, 320 weights
    assert report.original == original and [t.target for t in report.tries][0] == 0.95
    assert report.protected == {output: "output layer", second: "1024 weights < 1100"}
    assert report.sensitivity == []  # one layer left to prune: nothing to allocate between
    assert all(set(t.layer_targets) == {first} for t in report.tries)
    kept = [t for t in report.tries if t.kept]
    assert len(kept) <= 1 and all(not t.kept for t in report.tries[: len(report.tries) - 1])
    if report.kept is None:
        assert model is trained_model
    else:
        assert original - report.kept.accuracy <= 0.03 + 1e-12
        assert accuracy(model, digits.x_val, digits.y_val) == pytest.approx(report.kept.accuracy)
        for name in (second, output):  # protected: left dense
            assert float(np.mean(model.get_layer(name).get_weights()[0] == 0)) < 0.05
    for t in report.tries[:-1]:  # every try before the last missed the budget
        assert t.accuracy is None or original - t.accuracy > 0.03
    assert any(line.startswith("  try prune 95%") for line in lines)


@pytest.mark.slow
def test_layers_left_dense_are_pruned_too_when_they_hold_many_weights_and_the_budget_allows(trained_model, digits):
    """The output layer and a small layer hold 40% of the kernels here: the kept target is tried with them pruned
    too, and that model is kept exactly when it is also within the budget."""
    from deploykit.sparsity import search_sparsity
    from deploykit.stats import accepted

    first, second, output = [l.name for l in trained_model.layers if type(l).__name__ == "Dense"]
    config = SearchConfig(targets=(0.5,), min_layer_weights=1100)
    model, report = search_sparsity(
        trained_model, digits, 0.05, config=config, prune_config=PruneConfig(epochs=3, distill=True)
    )
    if report.kept is None:  # nothing within the budget: no wider try
        assert len(report.tries) == 1 and model is trained_model
        return
    # the accepted try, then the same target with the protected layers pruned too: at 50 %, the one level tried
    # (PROTECTED_LEVELS lists none below it), until one is within the budget
    plain, *wider = report.tries
    assert len(wider) == 1 and protected_levels(0.5) == [0.5]
    (wider,) = wider
    assert set(plain.layer_targets) == {first} and set(wider.layer_targets) == {first, second, output}
    assert wider.layer_targets[output] == 0.5 and "pruned to 50% too" in wider.note
    if accepted(wider, report.budget):
        assert report.kept is wider and report.protected == {}
        for name in (second, output):
            assert float(np.mean(model.get_layer(name).get_weights()[0] == 0)) > 0.4
    else:
        assert report.kept is plain and set(report.protected) == {second, output}
        assert float(np.mean(model.get_layer(output).get_weights()[0] == 0)) < 0.05


def test_the_protected_layers_are_tried_at_the_kept_target_then_lower_levels():
    """An output layer that loses points at 95 % may take 80 % or 50 %: the levels tried, highest first."""
    assert protected_levels(0.95) == [0.95, 0.8, 0.5]
    assert protected_levels(0.8) == [0.8, 0.5]
    assert protected_levels(0.7) == [0.7, 0.5]
    assert protected_levels(0.3) == [0.3]
