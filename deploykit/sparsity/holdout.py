"""The rows a fine-tune stops early on: the validation rows, or a holdout carved from the training rows.

Every sparsity and quantization-aware fine-tune keeps its best epoch by the loss on rows it does not train on. On the
validation rows, the run then decides on the same rows (which share is kept, the NLL rule, the int8 fallback, the
temperature): the kept model is selected on validation twice, and its validation figure can be biased upwards (on the
keras.io convnet validation beat test in all 12 structured tries measured, ``benchmarks/results/structured_tries.md``).
With ``tune_holdout`` > 0 the fine-tune holds out that share of the training rows instead (stratified on the class for
a classifier, chosen by the run's seed), and the validation rows are left to decide on.

It is an option, not the default, by ``benchmarks/results/holdout.md`` (same trainings, side by side): on the keras.io
convnet it cut the final model's validation-test gap from +1.47 to +0.18 pt and shipped an ONNX file within the
budget where the old way shipped none, but on five trainings of the book's network there was no upward gap to remove
(-0.33 pt on average without it, -0.55 pt with it; paired -0.22 pt, 95% CI -1.22 to +0.78) and it kept smaller
structured shares on three of them (b256 speed-up of the fastest ONNX within the budget 3.18x on average against 3.99x).
On five trainings of each convnet (``benchmarks/results/faster_seeds_kerasio_small_holdout.md``) it changed nothing
that matters: 3 of 5 met 1 pt on test either way, the served file's test change -0.92 / -0.96 pt on average without
it, -0.99 / -0.66 pt with it.

Too few training rows for a holdout of :data:`HOLDOUT_MIN_ROWS` (fewer than ~200 at 0.15): the fine-tune falls back to
stopping on the validation rows and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The share of the training rows held out for early stopping (``[sparsity.prune] tune_holdout``); 0: the validation
#: rows. 0 by default: see the module's docstring (0.15 is what was measured).
DEFAULT_TUNE_HOLDOUT = 0.0
#: Fewer held-out rows give a loss too noisy to pick an epoch by: below it the validation rows are used.
HOLDOUT_MIN_ROWS = 30
#: More held-out rows add little to the loss's precision and take rows from the training: a large split holds this many.
HOLDOUT_MAX_ROWS = 10_000


@dataclass(frozen=True)
class Holdout:
    """Which training rows a fine-tune trains on (``fit``) and stops early on (``held``), as sorted indices."""

    fit: np.ndarray
    held: np.ndarray

    def describe(self) -> str:
        return f"early stopping on {len(self.held)} held-out training rows (trained on {len(self.fit)})"


def holdout_rows(rows: int, share: float) -> int:
    """How many of ``rows`` training rows are held out at ``share``: 0 when that is below the floor (or share 0)."""
    wanted = min(int(round(share * rows)), HOLDOUT_MAX_ROWS)
    return wanted if share > 0 and wanted >= HOLDOUT_MIN_ROWS and rows - wanted >= wanted else 0


def fit_rows(rows: int, share: float) -> int:
    """The training rows a fine-tune trains on (what its steps per epoch, and a pruning schedule, count)."""
    return rows - holdout_rows(rows, share)


def split_holdout(y: np.ndarray, share: float, seed: int, stratify: bool) -> Holdout | None:
    """The fine-tune's training and held-out rows of labels ``y``; None when the training split is too small.

    Deterministic by ``seed``. ``stratify`` (a classifier's int labels): the rows are shuffled, ordered by class, and
    every (n / k)-th is held out, so each class is held out in its share to within one row.
    """
    n = len(y)
    k = holdout_rows(n, share)
    if k == 0:
        return None
    order = np.random.default_rng(seed).permutation(n)
    labels = np.asarray(y)
    if stratify and labels.reshape(n, -1).shape[1] == 1:
        order = order[np.argsort(labels.reshape(n)[order], kind="stable")]
    picked = np.zeros(n, dtype=bool)
    picked[order[(np.arange(k) * n) // k]] = True
    return Holdout(np.flatnonzero(~picked), np.flatnonzero(picked))


def stopping_text(share: float) -> str:
    """Which rows fine-tunes stop early on, for the run's report."""
    if share <= 0:
        return "the validation rows (tune_holdout 0), the rows the run then decides on"
    return (
        f"a holdout of {share:.0%} of the training rows (at most {HOLDOUT_MAX_ROWS:,}), never the validation rows "
        f"(with fewer than {fewest_rows(share)} training rows: the validation rows)"
    )


def fewest_rows(share: float) -> int:
    """The smallest training split that gets a holdout at ``share`` (> 0)."""
    low = int((HOLDOUT_MIN_ROWS - 1) / share)  # round(share * n) >= HOLDOUT_MIN_ROWS needs at least this many
    return next(n for n in range(max(1, low), 4 * HOLDOUT_MIN_ROWS + low + 2) if holdout_rows(n, share))
