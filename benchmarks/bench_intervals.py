"""Coverage of the paired accuracy-change interval: deploykit's (Tango's score interval) against the one it replaced.

Every accuracy change deploykit reports carries a 95% interval of the paired difference against the original
(``deploykit.stats.accuracy_change_interval``), and the budget's test confirmation reads it. Here both intervals
are drawn side by side on the same simulated comparisons: ``n`` rows, each gained by the new model with
probability ``gain`` and lost with probability ``loss`` (so the true change is ``gain - loss``). Coverage is the
share of draws whose interval holds the true change; 95% is what a 95% interval promises. The replaced interval
is Clopper-Pearson on the rows where the two models disagree, mapped to the change given how many there are (so
it conditions on that count); it is written here only as the reference.

    python benchmarks/bench_intervals.py [--draws 4000]

Writes ``results/intervals.json`` and ``results/intervals.md``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from common import write_results

from deploykit.stats import paired_score_interval

#: (rows, P(gained), P(lost)): the validation / test sizes of the Fashion sample (543) and of digits / a small
#: test split (225 to 270), at the changes budgets are decided at: a loss with few gains, a wash, a one-point drop.
CASES = [
    (225, 0.002, 0.015),
    (270, 0.0, 0.01),
    (543, 0.0, 0.01),
    (543, 0.005, 0.025),
    (543, 0.01, 0.02),
    (225, 0.02, 0.02),
    (2000, 0.01, 0.02),
]


def conditional_interval(gained: int, lost: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The interval deploykit used before: Clopper-Pearson on the ``m`` disagreeing rows, ``m / n * (2p - 1)``."""
    from scipy.stats import beta

    m = gained + lost
    if m == 0:
        return 0.0, 0.0
    alpha = (1 - level) / 2
    p_low = 0.0 if gained == 0 else float(beta.ppf(alpha, gained, m - gained + 1))
    p_high = 1.0 if gained == m else float(beta.ppf(1 - alpha, gained + 1, m - gained))
    return m / n * (2 * p_low - 1), m / n * (2 * p_high - 1)


def coverage(n: int, gain: float, loss: float, draws: int, seed: int) -> dict:
    """Both intervals' coverage and mean width over ``draws`` simulated comparisons."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [gain, loss, 1 - gain - loss], size=draws)[:, :2]
    truth = gain - loss
    out = {}
    for name, interval in (("tango", paired_score_interval), ("conditional", conditional_interval)):
        ends = np.array([interval(int(g), int(lost), n) for g, lost in counts])
        held = (ends[:, 0] <= truth + 1e-12) & (truth <= ends[:, 1] + 1e-12)
        share = float(held.mean())
        out[name] = {
            "coverage": share,
            "coverage_ci95": _wilson(int(held.sum()), draws),
            "mean_width_pt": float(100 * (ends[:, 1] - ends[:, 0]).mean()),
        }
    return out


def _wilson(hits: int, total: int, z: float = 1.96) -> list[float]:
    """The Wilson interval of a coverage share (the simulation's own noise)."""
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [centre - half, centre + half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args()
    rows = []
    for k, (n, gain, loss) in enumerate(CASES):
        rows.append({"rows": n, "gain": gain, "loss": loss, **coverage(n, gain, loss, args.draws, seed=k)})
    lines = [
        "# Coverage of the paired accuracy-change interval (95%)",
        "",
        f"`python benchmarks/bench_intervals.py --draws {args.draws}`: {args.draws} simulated comparisons per row. "
        "Coverage: the share of draws whose interval holds the true change (its own 95% Wilson interval beside "
        "it). Tango: deploykit's interval. Conditional: Clopper-Pearson on the disagreeing rows, the interval "
        "deploykit used before.",
        "",
        "| rows | P(gained) | P(lost) | true change | Tango coverage | conditional coverage | Tango width | "
        "conditional width |",
        "|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        t, c = r["tango"], r["conditional"]
        lines.append(
            f"| {r['rows']} | {r['gain']:.3f} | {r['loss']:.3f} | {100 * (r['gain'] - r['loss']):+.2f} pt | "
            f"{t['coverage']:.1%} [{t['coverage_ci95'][0]:.1%}, {t['coverage_ci95'][1]:.1%}] | "
            f"{c['coverage']:.1%} [{c['coverage_ci95'][0]:.1%}, {c['coverage_ci95'][1]:.1%}] | "
            f"{t['mean_width_pt']:.2f} pt | {c['mean_width_pt']:.2f} pt |"
        )
    write_results("intervals", {"draws": args.draws, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
