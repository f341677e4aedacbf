"""The ``[structured]`` table: structured pruning's options, their defaults per objective, and their checks.

Apart from :mod:`deploykit.pipeline.tables` only for size; it is one of the step tables
:class:`deploykit.pipeline.config.OptimizeConfig` holds. This module does not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploykit.configs import fraction, number
from deploykit.errors import ConfigError
from deploykit.pipeline.tables import Objective, _Table
from deploykit.sparsity.config import StructuredConfig

#: ``[structured] fraction = "auto"``: search the share of units removed instead of fixing it.
STRUCTURED_AUTO = "auto"
#: The shares an ``auto`` structured search chooses among (bisection: about 3 fine-tuned tries), highest first.
#: Two finer sets were measured on fresh trainings of the book network and are not the default. With 85 %
#: (0.85, 0.8, 0.75, 0.7, 0.6...): 85 % passed validation accuracy, then missed the NLL budget, and two of five
#: shipped nothing (b256 mean 2.31x against 3.10x; benchmarks/results/faster_seeds_levels.md). With 75 % added
#: (0.8, 0.75, 0.7, 0.6...): as good on four of five and better on one (faster_seeds_levels80.md), but with the
#: tries held to the NLL budget its 75 % try missed where 80 % passed (seed 20: 3.63x against 5.03x).
STRUCTURED_LEVELS = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
#: The share of the accuracy budget the structured step may spend on validation (the rest is left to the magnitude
#: search and int8, decided after it on the same rows: :func:`deploykit.pipeline.search_rule.step_budget`). The
#: whole budget by default: on five trainings of the book's network half of it kept fewer units (b256 2.40x against
#: 4.22x on average) and no better test figures (benchmarks/results/faster_seeds.md).
STRUCTURED_BUDGET_SHARE = 1.0
#: How a share is spread over the layers (:mod:`deploykit.sparsity.allocate`): ``uniform``, that share of every
#: layer's units; ``cost`` reaches the multiply-adds that leaves by removing the least important units per
#: multiply-add saved. How an ``auto`` search walks ``levels``: ``bisect`` (from the middle, about log2 tries) or
#: ``top-down`` (highest first, the first within the budget kept; finer levels at the top, where the speed is).
STRUCTURED_SEARCHES = ("bisect", "top-down")
STRUCTURED_TOP_DOWN_LEVELS = (0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3)
#: (search, allocate) when unset, by objective (None: any other). Bisect and uniform under every objective: top-down
#: by cost won on the five trainings it was tuned on (book network b256 mean 5.62x, min 4.60x against 4.22x / 3.40x:
#: benchmarks/results/faster_seeds_v3.md) but not beyond them: on the small CNN it stopped after 4 misses above the
#: 60 % bisection keeps (0.95x against 2.90x), and on five fresh trainings its 85 % try was the only one the time
#: budget fitted on two (faster_topdown.md, faster_seeds_fresh.md). Both stay options.
STRUCTURED_DEFAULTS = {None: ("bisect", "uniform")}


@dataclass(frozen=True)
class StructuredStep(_Table):
    """Remove whole hidden Dense units and conv channels before the sparsity search: fewer MACs, so faster.

    ``fraction`` of each hidden layer's units go (0: off), ``layer_fraction`` per layer by name; with
    ``allocate = "cost"`` a share is the multiply-adds it would leave, reached by removing the least important
    units per multiply-add saved across the layers (the costly layers lose more, the cheap ones less);
    ``"uniform"`` (the default): that share of each layer's units. ``"auto"``: the
    highest of ``levels`` within the budget, found by ``search`` (:mod:`deploykit.pipeline.structured_step`);
    unset: ``auto`` when the run's objective is ``latency`` (the user asked for the fastest model, and only
    removing units makes a dense model faster), else off. Fine-tuned with the sparsity tries' settings
    (``[sparsity.prune]`` epochs, distillation...). Kept only when its validation figure is within
    ``budget_share`` of the budget (:func:`deploykit.pipeline.search_rule.step_budget`); the sparsity search and
    int8 are then held to the whole budget against the original model, so together they never spend more than
    the one budget, and the later decisions keep room.
    """

    TABLE = "structured"
    fraction: float | str | None = None
    layer_fraction: dict[str, float] = field(default_factory=dict)
    levels: tuple[float, ...] | None = None  # None: the search's own (STRUCTURED_LEVELS / _TOP_DOWN_LEVELS)
    budget_share: float = STRUCTURED_BUDGET_SHARE
    allocate: str | None = None  # None: by the objective (STRUCTURED_DEFAULTS)
    search: str | None = None  # None: by the objective (STRUCTURED_DEFAULTS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", structured_fraction(self.fraction))
        share = number("structured.budget_share", self.budget_share, 0.0, 1.0, open_low=True)
        object.__setattr__(self, "budget_share", share)
        if self.search is not None and self.search not in STRUCTURED_SEARCHES:
            raise ConfigError(f"structured.search must be one of {', '.join(STRUCTURED_SEARCHES)}, got {self.search!r}")
        if self.levels is not None and (not isinstance(self.levels, (list, tuple)) or not self.levels):
            raise ConfigError(f"structured.levels must be a non-empty list of shares in (0, 1), got {self.levels!r}")
        if self.levels is not None:
            levels = {number("structured.levels", v, 0.0, 1.0, open_low=True, open_high=True) for v in self.levels}
            object.__setattr__(self, "levels", tuple(sorted(levels, reverse=True)))
        try:
            StructuredConfig(
                fraction=self.fixed, layer_fraction=self.layer_fraction, allocate=self.allocate or "uniform"
            )
        except ConfigError as exc:
            raise ConfigError(f"structured.{exc}") from None

    def how(self, objective: Objective) -> tuple[str, str]:
        """(search, allocate) of a run with ``objective``: the ones set, else its defaults (STRUCTURED_DEFAULTS)."""
        search, allocate = STRUCTURED_DEFAULTS.get(objective.value, STRUCTURED_DEFAULTS[None])
        return self.search or search, self.allocate or allocate

    def shares(self, objective: Objective) -> tuple[float, ...]:
        """The shares an ``auto`` search chooses among, highest first: ``levels``, else its search's own."""
        top_down = self.how(objective)[0] == "top-down"
        return self.levels or (STRUCTURED_TOP_DOWN_LEVELS if top_down else STRUCTURED_LEVELS)

    @property
    def fixed(self) -> float:
        """The fixed share (0 when searched or unset)."""
        return self.fraction if isinstance(self.fraction, float) else 0.0

    def searching(self, objective: Objective) -> bool:
        """Whether the run searches the share: ``auto``, or unset under ``--objective latency``."""
        if self.fraction == STRUCTURED_AUTO:
            return True
        return self.fraction is None and not self.layer_fraction and objective is Objective.LATENCY

    def enabled(self, objective: Objective) -> bool:
        return self.searching(objective) or self.fixed > 0 or any(v > 0 for v in self.layer_fraction.values())


def structured_fraction(value: Any) -> float | str | None:
    """``--structured`` / ``[structured] fraction``: a share in [0, 1), ``"auto"`` (searched) or None (unset)."""
    if value is None or value == STRUCTURED_AUTO:
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"structured must be a share in [0, 1) or {STRUCTURED_AUTO!r}, got {value!r}") from None
    return fraction("structured.fraction", value)
