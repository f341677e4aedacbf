"""The decisions users read off probability heads that deploykit holds to their RMSE (root Brier): side by side.

A multi-label sigmoid head, a softmax per pixel (keras.io's U-Net) and a softmax per step (a tagger; keras.io's
lstm_seq2seq, a character per step) are shipped as their probabilities, and every decision of ``deploykit
optimize`` reads their RMSE against the one-hot or 0/1 labels. Their users read decisions: Keras'
``binary_accuracy`` (p > 0.5 per label) and the pixel or token accuracy (argmax per position). This script
measures those on the test split ``optimize`` confirmed on (rows no decision saw), for the user's model and every
shipped ONNX and TFLite file, with the change's 95% interval (a paired bootstrap over rows, whose labels are not
independent within a row).

Reads the folders ``bench_foreign.py --work DIR`` kept (the user's model, its data, ``out_<model>``). Writes
``benchmarks/results/decisions.json`` and ``decisions.md``. Run from the repository root:

    python benchmarks/bench_foreign.py --models multi_label,unet,tagger --work WORK
    python benchmarks/bench_decisions.py --work WORK
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import last_rows, write_results  # noqa: E402  (puts the repository on sys.path)

#: The probability heads of bench_foreign's fourth round: how a decision is read off each.
HEADS = {"multi_label": "labels", "unet": "positions", "tagger": "positions", "lstm_seq2seq": "positions"}
DRAWS = 2000


def test_split(kind: str, folder: Path):
    """(inputs, targets as the report read them, output shape) of the test split ``optimize`` used (its seed); the
    inputs one array, or one per input by name for a model with several (lstm_seq2seq's source and target so far)."""
    from deploykit.core.multi_io_model import layout_of
    from deploykit.io.inputs import as_dataset
    from deploykit.io.lengths import load_model_for

    report = json.loads((folder / f"out_{kind}" / "report.json").read_text())
    seed = int(report["config"]["input"].get("seed", 42))
    layout = layout_of(load_model_for(folder / f"{kind}.keras", str(folder / f"{kind}.npz")))  # any length: the data's
    data = as_dataset(str(folder / f"{kind}.npz"), seed=seed, layout=layout)
    shape = layout.outputs[0].shape if layout is not None else (data.num_outputs,)
    x = layout.split_inputs(data.x_test) if layout is not None and layout.several_inputs else data.x_test
    return x, data.y_test, shape


def decisions(out: np.ndarray, shape, how: str) -> np.ndarray:
    """Per row, the decisions a user reads: p > 0.5 per label, or the argmax per position."""
    out = np.asarray(out).reshape(len(out), *shape)
    return out > 0.5 if how == "labels" else out.argmax(axis=-1)


def row_accuracy(decided: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return (decided == truth).reshape(len(truth), -1).mean(axis=1)


def change(new: np.ndarray, user: np.ndarray) -> list[float]:
    """Mean per-row accuracy change and its 95% paired bootstrap interval over rows (seeded)."""
    idx = np.random.default_rng(0).integers(0, len(new), (DRAWS, len(new)))
    draws = new[idx].mean(axis=1) - user[idx].mean(axis=1)
    return [float(new.mean() - user.mean()), *(float(q) for q in np.quantile(draws, (0.025, 0.975)))]


def run_file(path: Path, x) -> np.ndarray:
    """A shipped file's outputs on ``x`` in its own runtime (its one input, or its inputs by name; its one output)."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, x if isinstance(x, dict) else {session.get_inputs()[0].name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    if not isinstance(x, dict):
        (name,) = runner.get_input_details()
        x = {name: x}
    (result,) = runner(**x).values()
    return result


def one(kind: str, folder: Path) -> dict:
    import keras

    x, y, shape = test_split(kind, folder)
    how = HEADS[kind]
    truth = decisions(y, shape, how)  # the labels' own decisions: 0/1 per label, or the one-hot's class
    user_out = keras.saving.load_model(folder / f"{kind}.keras").predict(x, verbose=0)
    user = decisions(user_out, shape, how)
    user_rows = row_accuracy(user, truth)
    rows = len(truth)
    report = json.loads((folder / f"out_{kind}" / "report.json").read_text())
    files = []
    for row in report["artifacts"]:
        path = folder / f"out_{kind}" / row["file"]
        if row["verdict"] != "pass" or path.suffix not in (".onnx", ".tflite") or "_mc" in path.stem:
            continue
        mine = decisions(run_file(path, x), shape, how)
        files.append(
            {
                "file": row["file"],
                "accuracy": float(row_accuracy(mine, truth).mean()),
                "change": change(row_accuracy(mine, truth), user_rows),
                "agreement": float((mine == user).mean()),
                "rmse_change": row.get("rmse_change"),
            }
        )
    user_accuracy = float(user_rows.mean())
    return {"model": kind, "decision": how, "test_rows": rows, "user_accuracy": user_accuracy, "files": files}


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Decisions read off probability heads shipped as values",
        "",
        "Keras' `binary_accuracy` (multi-label: p > 0.5 per label) or the accuracy per position (argmax per pixel or "
        "step) on the test split `deploykit optimize` confirmed on, for the user's model and each shipped file; "
        "*change*: vs the user's model, 95% paired bootstrap over rows; *agreement*: decisions equal to the user's "
        "model's; *Δ RMSE*: what `optimize` held the file to (root Brier score, vs the labels).",
        "",
        "| model | decision | test rows | user's accuracy | file | accuracy | change (95% CI) | agreement | Δ RMSE |",
        "|---|---|---:|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        for f in r["files"]:
            est, low, high = (100 * v for v in f["change"])
            rmse = "—" if f["rmse_change"] is None else f"{100 * f['rmse_change']:+.1f}%"
            lines.append(
                f"| {r['model']} | {r['decision']} | {r['test_rows']} | {r['user_accuracy']:.4f} | `{f['file']}` | "
                f"{f['accuracy']:.4f} | {est:+.2f} pt [{low:+.2f}, {high:+.2f}] | {f['agreement']:.4f} | {rmse} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="the folder bench_foreign.py --work kept")
    ap.add_argument("--models", default=",".join(HEADS), help=f"comma-separated, of {', '.join(HEADS)}")
    args = ap.parse_args()
    rows = last_rows("decisions")
    rows.update((kind, one(kind, args.work / kind)) for kind in args.models.split(","))
    ordered = [rows[kind] for kind in HEADS if kind in rows]
    write_results("decisions", {"rows": ordered}, markdown(ordered))


if __name__ == "__main__":
    main()
