"""Typed configs of the sparsity steps: frozen, validated on construction, round-trip through dicts (TOML)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from deploykit.configs import SEED_MAX, Config, boolean, fraction, integer, names, number, positive
from deploykit.errors import ConfigError
from deploykit.sparsity.allocate import ALLOCATIONS
from deploykit.sparsity.holdout import DEFAULT_TUNE_HOLDOUT


def parse_block_size(value: Any) -> tuple[int, int]:
    """``(1, 4)``, ``[1, 4]`` or ``"1x4"`` -> ``(1, 4)``; anything else is a ConfigError."""
    parts: list[Any] = []
    if isinstance(value, str):
        parts = [int(p) if p.strip().isdigit() else None for p in value.lower().split("x")]
    elif isinstance(value, (tuple, list)):
        parts = [p if isinstance(p, int) and not isinstance(p, bool) else None for p in value]
    if len(parts) != 2 or any(p is None or p < 1 for p in parts):
        raise ConfigError(f"block_size must be two positive integers like 1x4 or (1, 4), got {value!r}")
    return parts[0], parts[1]


@dataclass(frozen=True)
class _TuneConfig(Config):
    """What every fine-tuning step shares: which Dense layers, and how long and fast to train."""

    skip_layers: tuple[str, ...] = ()  # Dense layers left alone, by name
    skip_output: bool = True  # leave the output layer alone
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 5e-4  # Nadam; small: this fine-tunes a trained model
    patience: int = 3  # early stopping on val_loss (restores the best epoch)
    # early stopping's rows: this share of the training rows, held out (deploykit.sparsity.holdout); 0 (the
    # default): the validation rows, which the run's decisions are then taken on too
    tune_holdout: float = DEFAULT_TUNE_HOLDOUT
    seed: int = 42
    compact: bool = False  # run compact() on the result (removes dead neurons)
    # Knowledge distillation from the model being sparsified (Hinton et al. 2015): the loss mixes the
    # cross-entropy on the labels with the KL divergence to the teacher's outputs softened by
    # ``temperature`` (weight ``alpha``, scaled by T^2). The teacher's soft targets regularize the
    # fine-tuning, so a small training set is tracked, not memorized.
    distill: bool = False
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha goes to the hard labels

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_layers", names("skip_layers", self.skip_layers))
        for name in ("epochs", "batch_size", "patience"):
            integer(name, getattr(self, name), 1)
        for name in ("learning_rate", "temperature"):
            object.__setattr__(self, name, positive(name, getattr(self, name)))
        object.__setattr__(self, "alpha", number("alpha", self.alpha, 0.0, 1.0))
        object.__setattr__(self, "tune_holdout", number("tune_holdout", self.tune_holdout, 0.0, 0.5))
        for name in ("skip_output", "compact", "distill"):
            boolean(name, getattr(self, name))
        integer("seed", self.seed, 0, SEED_MAX)

    def with_options(self, **options: Any):
        """A copy with the options that are not None replaced (validated again)."""
        return dataclasses.replace(self, **{k: v for k, v in options.items() if v is not None})


@dataclass(frozen=True)
class PruneConfig(_TuneConfig):
    """TF-MOT magnitude pruning: a PolynomialDecay from 0 to the target over a fine-tuning run.

    The schedule is derived from the data: pruning ends after ``end_fraction``
    of the training steps, with a mask update every quarter epoch, so the
    remaining epochs recover accuracy at the final sparsity.
    """

    target_sparsity: float = 0.8
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # per-layer targets, by name
    block_size: tuple[int, int] = (1, 1)  # e.g. (1, 4): zero whole 1x4 blocks of the kernel
    end_fraction: float = 0.7  # pruning reaches its target after this fraction of the steps
    tolerance: float = 0.01  # the reached sparsity of each pruned layer must be this close to its target

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "target_sparsity", fraction("target_sparsity", self.target_sparsity))
        if not isinstance(self.layer_sparsity, dict):
            raise ConfigError(f"layer_sparsity must be a table of layer name = sparsity, got {self.layer_sparsity!r}")
        object.__setattr__(
            self,
            "layer_sparsity",
            {str(k): fraction(f"layer_sparsity[{k!r}]", v) for k, v in self.layer_sparsity.items()},
        )
        object.__setattr__(self, "block_size", parse_block_size(self.block_size))
        object.__setattr__(self, "end_fraction", number("end_fraction", self.end_fraction, 0.0, 1.0, open_low=True))
        object.__setattr__(
            self, "tolerance", number("tolerance", self.tolerance, 0.0, 1.0, open_low=True, open_high=True)
        )

    def target_for(self, layer_name: str) -> float:
        """The sparsity a layer is pruned to (its own target, else the model-wide one)."""
        return self.layer_sparsity.get(layer_name, self.target_sparsity)


@dataclass(frozen=True)
class L1Config(_TuneConfig):
    """l1 sparsity: fine-tune with an l1 kernel penalty, then zero the weights below a threshold."""

    l1: float = 1e-3  # l1 factor of keras.regularizers.L1 on each selected Dense kernel
    threshold: float = 0.02  # |w| < threshold -> exactly 0 after fine-tuning

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("l1", "threshold"):
            object.__setattr__(self, name, positive(name, getattr(self, name)))


@dataclass(frozen=True)
class StructuredConfig(_TuneConfig):
    """How many units each layer loses, and the fine-tuning that recovers from it (distilled by default)."""

    fraction: float = 0.5  # share of each chosen layer's units removed
    layer_fraction: dict[str, float] = field(default_factory=dict)  # per-layer shares, by name
    distill: bool = True
    # "uniform": ``fraction`` of each layer's units; "cost": the multiply-adds that leaves, reached by removing the
    # least important units per multiply-add saved across the layers (deploykit.sparsity.allocate)
    allocate: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "fraction", fraction("fraction", self.fraction))
        if not isinstance(self.layer_fraction, dict):
            raise ConfigError(f"layer_fraction must be a table of layer name = fraction, got {self.layer_fraction!r}")
        object.__setattr__(
            self,
            "layer_fraction",
            {str(k): fraction(f"layer_fraction[{k!r}]", v) for k, v in self.layer_fraction.items()},
        )
        if self.allocate not in ALLOCATIONS:
            raise ConfigError(f"allocate must be one of {', '.join(ALLOCATIONS)}, got {self.allocate!r}")

    def fraction_for(self, name: str) -> float:
        return self.layer_fraction.get(name, self.fraction)


#: Sparsity targets tried from high to low; the highest whose model meets the accuracy budget is kept.
DEFAULT_SEARCH_TARGETS = (0.95, 0.9, 0.8, 0.7, 0.5)


@dataclass(frozen=True)
class SearchConfig(Config):
    """The accuracy-budgeted sparsity search (:func:`deploykit.sparsity.search_sparsity`).

    ``targets`` are tried from the highest down; the first model within the budget is kept.
    With ``sensitivity``, each prunable layer is pruned alone (one shot, no training) at a grid of
    levels and the per-layer targets of a try are set so that the least sensitive layers take the
    most sparsity at the same overall target. The output layer (``skip_output`` of the prune
    config) and layers with fewer than ``min_layer_weights`` kernel weights are left dense: they
    hold few weights and most of the accuracy. With ``prune_protected``, when those layers hold a good share of
    the weights (a small convnet's output Dense: about half), the kept target is tried once more with them pruned
    too, then with them at the lower :data:`~deploykit.sparsity.search.PROTECTED_LEVELS`, and the first model that
    also meets the budget is kept.
    """

    enabled: bool = True
    targets: tuple[float, ...] = DEFAULT_SEARCH_TARGETS
    sensitivity: bool = True
    min_layer_weights: int = 1024
    prune_protected: bool = True

    def __post_init__(self) -> None:
        boolean("enabled", self.enabled)
        boolean("sensitivity", self.sensitivity)
        boolean("prune_protected", self.prune_protected)
        if not isinstance(self.targets, (list, tuple)) or not self.targets:
            raise ConfigError(f"targets must be a non-empty list of sparsities in (0, 1), got {self.targets!r}")
        targets = {number("targets", t, 0.0, 1.0, open_low=True, open_high=True) for t in self.targets}
        object.__setattr__(self, "targets", tuple(sorted(targets, reverse=True)))
        integer("min_layer_weights", self.min_layer_weights, 0)
