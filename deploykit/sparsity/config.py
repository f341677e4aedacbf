"""Typed configs of the sparsity steps: frozen, validated on construction, round-trip through dicts (TOML)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from deploykit.configs import Config
from deploykit.errors import ConfigError


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


def _check_fraction(name: str, value: Any) -> float:
    """A sparsity in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_positive(name: str, value: Any, kind: type) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ConfigError(f"{name} must be a positive {kind.__name__}, got {value!r}")


@dataclass(frozen=True)
class _TuneConfig(Config):
    """What every fine-tuning step shares: which Dense layers, and how long and fast to train."""

    skip_layers: tuple[str, ...] = ()  # Dense layers left alone, by name
    skip_output: bool = True  # leave the output layer alone
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 5e-4  # Nadam; small: this fine-tunes a trained model
    patience: int = 3  # early stopping on val_loss (restores the best epoch)
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
        if isinstance(self.skip_layers, str) or not all(isinstance(n, str) for n in self.skip_layers):
            raise ConfigError(f"skip_layers must be a list of layer names, got {self.skip_layers!r}")
        object.__setattr__(self, "skip_layers", tuple(self.skip_layers))
        for name in ("epochs", "batch_size", "patience"):
            _check_positive(name, getattr(self, name), int)
        for name in ("learning_rate", "temperature"):
            if isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool):
                object.__setattr__(self, name, float(getattr(self, name)))
            _check_positive(name, getattr(self, name), float)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        for name in ("skip_output", "compact", "distill"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

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
        object.__setattr__(self, "target_sparsity", _check_fraction("target_sparsity", self.target_sparsity))
        if not isinstance(self.layer_sparsity, dict):
            raise ConfigError(f"layer_sparsity must be a table of layer name = sparsity, got {self.layer_sparsity!r}")
        object.__setattr__(
            self, "layer_sparsity", {str(k): _check_fraction(f"layer_sparsity[{k!r}]", v) for k, v in self.layer_sparsity.items()}
        )
        object.__setattr__(self, "block_size", parse_block_size(self.block_size))
        if isinstance(self.end_fraction, bool) or not isinstance(self.end_fraction, (int, float)) or not 0.0 < self.end_fraction <= 1.0:
            raise ConfigError(f"end_fraction must be a number in (0, 1], got {self.end_fraction!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not 0.0 < self.tolerance < 1.0:
            raise ConfigError(f"tolerance must be a number in (0, 1), got {self.tolerance!r}")

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
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
            _check_positive(name, getattr(self, name), float)


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
    hold few weights and most of the accuracy.
    """

    enabled: bool = True
    targets: tuple[float, ...] = DEFAULT_SEARCH_TARGETS
    sensitivity: bool = True
    min_layer_weights: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool) or not isinstance(self.sensitivity, bool):
            raise ConfigError(f"enabled and sensitivity must be true or false, got {self.enabled!r}, {self.sensitivity!r}")
        if isinstance(self.targets, (int, float, str)) or not self.targets:
            raise ConfigError(f"targets must be a non-empty list of sparsities in (0, 1), got {self.targets!r}")
        targets = tuple(_check_fraction("targets", t) for t in self.targets)
        if any(t <= 0 for t in targets):
            raise ConfigError(f"targets must be sparsities in (0, 1), got {list(self.targets)!r}")
        object.__setattr__(self, "targets", tuple(sorted(set(targets), reverse=True)))
        if isinstance(self.min_layer_weights, bool) or not isinstance(self.min_layer_weights, int) or self.min_layer_weights < 0:
            raise ConfigError(f"min_layer_weights must be an integer >= 0, got {self.min_layer_weights!r}")
