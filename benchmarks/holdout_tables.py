"""Fine-tunes stopped early on the validation rows vs on a holdout of the training rows, side by side (issue 23, "decide
on validation without leaking"): ``results/holdout.md`` and ``.json`` from one ``bench_faster.py --seeds ...
--tune-holdouts 0,0.15 --out DIR`` run (its ``faster_seeds.json`` and the runs' ``report_seed*.json``)::

    python benchmarks/holdout_tables.py DIR [--out benchmarks/results] [--name holdout]

Per seed and arm: the structured share and magnitude sparsity kept, the final model's validation and test change
against the original (``model.keras``: what the run decided on, and what it confirms on) and their gap, the same for
the kept structured try, the NLL change on both splits, how many files shipped, and the fastest shipped ONNX within
the budget with its b1 / b256 speed-up (1 intra-op thread; bench_faster's timing). Then per arm the mean gap with its
standard deviation over the seeds, the paired difference of the gaps (holdout minus validation) and the speed-ups.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import RESULTS, write_results  # noqa: E402  (puts the repository on sys.path)
from faster_tables import BUDGET, fastest_within  # noqa: E402

TARGET_B256 = 4.0  # issue 23: the book network's fastest ONNX within the budget, at batch 256, on every training


def final_row(report: dict) -> dict:
    """The final model (``model.keras``): its validation and test change and NLL change against the original."""
    row = next((a for a in report.get("artifacts", []) if a["file"] == "model.keras"), None)
    if row is None or not row.get("validation"):
        return {}
    val = row["validation"]
    return {
        "val_change": val["change"],
        "test_change": row["accuracy_change"],
        "gap": val["change"] - row["accuracy_change"] if row["accuracy_change"] is not None else None,
        "val_nll_change": val.get("nll_change"),
        "test_nll_change": row.get("nll_change"),
        "verdict": row["verdict"],
    }


def structured_row(run: dict) -> dict:
    """The kept structured try: its validation change (the try) and the step's test change, both vs the original."""
    kept = run["structured"]["kept"]
    if not kept:
        return {"kept": 0.0}
    try_ = next((t for t in run["tries"] if t["setting"] == f"structured {100 * kept:.0f}%"), None)
    test = run["structured"].get("test_change")
    val = try_["val_change"] if try_ else None
    return {"kept": kept, "val_change": val, "test_change": test, "gap": None if None in (val, test) else val - test}


def arm_row(run: dict, folder: Path) -> dict:
    """One optimize run's figures (see the module's docstring)."""
    held = run.get("tune_holdout")
    name = f"report_seed{run['seed']}_share{run['budget_share']}" + ("" if held is None else f"_holdout{held}")
    path = folder / f"{name}.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    fastest = fastest_within(run)
    magnitude = max((f["sparsity"] or 0.0 for f in run["files"]), default=0.0)
    return {
        "model": run["model"],
        "seed": run["seed"],
        "tune_holdout": held,
        "structured": structured_row(run),
        "magnitude_sparsity": magnitude,
        "final": final_row(report),
        "shipped": len(run["files"]),
        "fastest": None if fastest is None else fastest["file"],
        "b1_speedup": None if fastest is None else fastest["b1_speedup"],
        "b256_speedup": None if fastest is None else fastest["b256_speedup"],
        "wall_s": run["wall_s"],
        "cpu_s": run["cpu_s"],
        "plan_epochs": (run.get("plan") or {}).get("epochs"),
    }


def _spread(values: list[float]) -> str:
    """``mean ± sd (n)`` in points."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):+.2f} ± {100 * sd:.2f} pt (n={len(values)})"


#: Student's t at 97.5 % by degrees of freedom (1..10): the paired differences' 95 % interval over a few trainings.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _interval(values: list[float]) -> str:
    """``mean ± sd (n), 95% CI [low, high]`` in points (t interval over the trainings; none for one)."""
    values = [v for v in values if v is not None]
    text = _spread(values)
    if len(values) < 2 or len(values) > len(T975) + 1:
        return text
    half = T975[len(values) - 2] * statistics.stdev(values) / len(values) ** 0.5
    mean = statistics.mean(values)
    return f"{text}, 95% CI [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] pt"


def _pt(value) -> str:
    return "—" if value is None else f"{100 * value:+.2f}"


def summary(rows: list[dict]) -> dict:
    """Per model and arm (``"book MLP, tune_holdout 0.15"``): mean gaps, trainings shipping within the budget,
    speed-ups."""
    arms: dict = {}
    for row in rows:
        arms.setdefault(_arm(row), []).append(row)
    out = {}
    for arm, group in arms.items():
        speed = [r["b256_speedup"] or 0.0 for r in group]
        out[arm] = {
            "final_gap_mean": _mean(r["final"].get("gap") for r in group if _changed(r)),
            "final_gap_sd": _sd(r["final"].get("gap") for r in group if _changed(r)),
            "structured_gap_mean": _mean(r["structured"].get("gap") for r in group),
            "structured_gap_sd": _sd(r["structured"].get("gap") for r in group),
            "within_budget": sum(r["fastest"] is not None for r in group),
            "at_target": sum(s >= TARGET_B256 for s in speed),
            "b256_mean": statistics.mean(speed),  # a training that ships nothing within the budget counts as 0
            "b256_min": min(speed),
            "trainings": len(group),
        }
    return out


def _arm(row: dict) -> str:
    return f"{row['model']}, tune_holdout {row['tune_holdout']:g}"


def _changed(row: dict) -> bool:
    """Whether the run changed the model (a kept structured share or magnitude sparsity): else its gap is 0 by
    construction and says nothing of the selection."""
    return bool(row["structured"]["kept"] or row["magnitude_sparsity"])


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _sd(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def paired(rows: list[dict], old: float, new: float, key: str) -> list[float]:
    """Per model and seed, the ``key`` gap with ``tune_holdout`` ``new`` minus with ``old`` (where both have one)."""
    by = {(r["tune_holdout"], r["model"], r["seed"]): r for r in rows}
    seeds = list(dict.fromkeys((r["model"], r["seed"]) for r in rows))
    pick = (
        (lambda r: r["final"].get("gap") if _changed(r) else None)
        if key == "final"
        else (lambda r: r["structured"].get("gap"))
    )
    diffs = []
    for seed in seeds:
        a, b = by.get((old, *seed)), by.get((new, *seed))
        if a and b and pick(a) is not None and pick(b) is not None:
            diffs.append(pick(b) - pick(a))
    return diffs


def render(rows: list[dict], stats: dict, source: str) -> str:
    holdouts = list(dict.fromkeys(r["tune_holdout"] for r in rows))
    lines = [
        "# Fine-tunes stopped early on validation vs on a holdout of the training rows (issue 23)",
        "",
        f"Data: {source}. The book network trained once per seed (bench_faster's `--seeds`; a convnet: bench_faster's "
        "training, seed —), the same trained model for both arms, then one `optimize --objective latency` run per "
        "arm (`tune_holdout`: 0 = every "
        "fine-tune stops early and keeps its best epoch on the validation rows, the rows the run then decides on; "
        "0.15 = on a stratified 15% of the training rows, which it then does not train on). Gap: validation "
        "change minus test change, both against the original, of the final model (`model.keras`: sparsity and "
        "structured pruning, before export) and of the kept structured try; positive = validation flattered the "
        "model. Epochs per try: the time budget's plan, set by the epoch time measured under load (it differs "
        "between the arms of a seed: a confounder). Fastest: the shipped ONNX with the highest b256 speed-up whose "
        "test change is within "
        f"{100 * BUDGET:g} pt (1 intra-op thread, loaded machine).",
        "",
        "| model, seed | tune_holdout | structured kept | magnitude % | final Δ val / test (gap), pt | final NLL Δ "
        "val / test | structured try Δ val / test (gap), pt | shipped | fastest ONNX within budget | b1 / b256 | "
        "epochs per try |",
        "|---|---:|---:|---:|---|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        f, s = r["final"], r["structured"]
        nll = (
            "—"
            if f.get("val_nll_change") is None
            else f"{100 * f['val_nll_change']:+.1f}% / {100 * (f.get('test_nll_change') or 0):+.1f}%"
        )
        speed = "—" if r["fastest"] is None else f"{r['b1_speedup']:.2f}x / {r['b256_speedup']:.2f}x"
        lines.append(
            f"| {r['model']}, {'—' if r['seed'] is None else r['seed']} | {r['tune_holdout']:g} | "
            f"{100 * s['kept']:.0f}% | {100 * r['magnitude_sparsity']:.0f}% | "
            f"{_pt(f.get('val_change'))} / {_pt(f.get('test_change'))} ({_pt(f.get('gap'))}) | {nll} | "
            f"{_pt(s.get('val_change'))} / {_pt(s.get('test_change'))} ({_pt(s.get('gap'))}) | {r['shipped']} | "
            f"{'none' if r['fastest'] is None else '`' + r['fastest'] + '`'} | {speed} | {r['plan_epochs'] or '—'} |"
        )
    lines += [
        "",
        "| model, tune_holdout | final gap (mean ± sd) | structured try gap | within budget | b256 ≥ 4x | b256 mean "
        "(none = 0) / min |",
        "|---:|---|---|---:|---:|---|",
    ]
    for arm, st in stats.items():
        group = [r for r in rows if _arm(r) == arm]
        lines.append(
            f"| {arm} | {_spread([r['final'].get('gap') for r in group if _changed(r)])} | "
            f"{_spread([r['structured'].get('gap') for r in group])} | {st['within_budget']} of {st['trainings']} | "
            f"{st['at_target']} of {st['trainings']} | {st['b256_mean']:.2f}x / {st['b256_min']:.2f}x |"
        )
    if len(holdouts) == 2:
        old, new = holdouts
        for model in dict.fromkeys(r["model"] for r in rows):
            for key, what in (("final", "final model"), ("structured", "kept structured try")):
                lines.append(
                    f"\nPaired, {model}, {what}: gap with tune_holdout {new:g} minus gap with {old:g}, per training: "
                    f"{_interval(paired([r for r in rows if r['model'] == model], old, new, key))}."
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="bench_faster's --out folder of the --tune-holdouts run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="holdout")
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the results")
    args = parser.parse_args()
    runs = args.runs / "faster_seeds.json"  # --seeds: the book network per seed; else one row per model
    seeds = json.loads((runs if runs.exists() else args.runs / "faster.json").read_text())
    rows = [arm_row(run, args.runs) for run in seeds["runs"]]
    stats = summary(rows)
    text = render(rows, stats, seeds["data"])
    if args.notes:
        text += "\n\n" + args.notes.read_text()
    data = {"machine": seeds["machine"], "data": seeds["data"], "rows": rows, "summary": stats}
    holdouts = list(dict.fromkeys(r["tune_holdout"] for r in rows))
    if len(holdouts) == 2:
        data["paired_gap_difference"] = {
            f"{model}, {key}": paired([r for r in rows if r["model"] == model], *holdouts, key)
            for model in dict.fromkeys(r["model"] for r in rows)
            for key in ("final", "structured")
        }
    write_results(args.name, data, text, args.out)


if __name__ == "__main__":
    main()
