"""Faster, not only smaller (issue 23): what ``deploykit optimize --objective latency`` ships and recommends.

Four models on the Fashion-MNIST sample (``../shared``; else random images, where only the speed figures mean
something): the book's MLP (``../shared/models``), issue 23's small CNN (Rescaling -> Conv32 -> BN -> ReLU -> pool
-> Conv64 -> BN -> ReLU -> pool -> Dense 10), the keras.io "Simple MNIST convnet", and MobileNetV2 (alpha 0.35,
96x96, ``weights=None``, the images upscaled, trained briefly), all built in Keras 3 and saved with ``model.save``.

Each goes through one ``optimize`` run with ``objective="latency"`` (so the structured share is searched:
``[structured] fraction = "auto"``), the magnitude search, ONNX float32 / int8-dynamic / int8-static and TFLite
int8-full (:data:`OPTIONS`: a time budget or fewer epochs per try). The run's report.json recommends a file per
objective; every shipped ONNX file and the original model's float32 ONNX are then timed again here, **1 intra-op
thread**, interleaved, at batch 1 and 256 (the issue's targets; TFLite rows keep the run's own LiteRT figures). Gzip
ratio: the original's float32 weights, gzip -9, over the file's gzip (bench_cnn's baseline). The runs' Pareto plots
are copied beside the results.
Writes ``benchmarks/results/faster.json`` and ``.md`` (and ``faster_<model>_*.png``)::

    python benchmarks/bench_faster.py [--models book,small,kerasio,mobilenet] [--out FOLDER] [--merge]

The convnets are trained here to a real accuracy (:data:`TRAINING`: early stopping on a holdout of the training
split, so optimize's validation and test rows stay unseen); the table gives the original's test accuracy.
``--merge`` keeps the rows of the models an earlier run in ``--out`` measured and this one does not re-run, and
writes the results after every model. The speed-ups are also measured at onnxruntime's default threads, and a
section compares each model with the issue's targets (``faster_tables.TARGETS``; int8 vs float32 at b256).

``--seeds 0,1,2,3,4`` (the issue's "5 trainings"): the book network trained once per seed the way
``bench_budget.py`` trains it (its ``train``: the chapter's BN + ELU + Dropout MLP, Nadam, early stopping, on the
Fashion sample's training split), each through the same ``optimize`` run; writes ``results/faster_seeds.json`` and
``.md`` after every seed (a table per seed, then the mean / min of the b1 / b256 speed-ups of the fastest shipped
ONNX whose test change is within the budget by its point estimate)::

    python benchmarks/bench_faster.py --models book --seeds 0,1,2,3,4

The two small convnets take ``--seeds`` too (``--models small,kerasio``: each trained once per seed on the same
splits, as above; ``results/faster_seeds_small_kerasio.*``, with the smallest file's gzip ratio against their 12x
target); MobileNetV2 does not (a training costs too much).

``--tune-holdouts 0,0.15``: one optimize run per fine-tuning holdout (``tune_holdout``) on the same trained model, side
by side (with or without ``--seeds``); ``holdout_tables.py`` turns the runs into ``results/holdout.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FASHION, RESULTS, write_results  # noqa: E402  (puts the repository on sys.path)
from faster_tables import BOOK_KIND, render, render_seeds  # noqa: E402  (the tables: pure Python)

BOOK = FASHION.parents[1] / "models" / "book_fashion_bn_dropout.keras"
REPEATS_B1, REPEATS_B256 = 100, 9  # at least; more while a file's calls take under SECONDS_PER_FILE in all
SECONDS_PER_FILE, MAX_REPEATS = 1.0, 400
QUANTIZE = "float32,int8-dynamic,int8-static,int8-full"
#: Each model's optimize options beside the common ones. The book MLP runs under a time budget (minutes: the plan
#: fits the searches and exports in it); the two small convnets get optimize's default fine-tuning (early-stopped
#: epochs: about 2 minutes a run on 2 cores; with 4 epochs per try, the setting of the runs before
#: ``results/faster_vnni.md``, the keras.io convnet kept 30 % structured, not 50 %); MobileNetV2's epochs cost too much
#: for that (a 9-min budget kept it whole), so it gets 2 epochs per try and no magnitude search (its target is speed;
#: the search would only make it smaller). ``--set`` overrides these for one run.
OPTIONS = {
    "book": {"time_budget": 6.0},
    "small": {},
    "kerasio": {},
    "mobilenet": {"epochs": 2, "sparsity": "none"},
}
TITLES = {"book": "book MLP", "small": "small CNN", "kerasio": "keras.io convnet", "mobilenet": "MobileNetV2 0.35"}
MOBILENET_ROWS, MOBILENET_SIDE = 1500, 96
#: Training of the convnets before optimize: (most epochs, early-stopping patience, batch size, first epoch early
#: stopping may stop at), stopped on a holdout carved from the training split (HOLDOUT of it), so the validation rows
#: optimize decides on and the test rows it confirms on are never seen by training. The first version trained 3
#: epochs and left the small CNN at 40% and MobileNetV2 at chance: their BatchNorm moving statistics (momentum 0.99;
#: keras.applications' 0.999) had not caught up with the weights, so inference-mode accuracy dips for the first
#: epochs while training accuracy climbs. Hence the smaller batches (more steps), no stopping during that warm-up,
#: and for MobileNetV2 (about 900 training rows) BatchNorm momentum 0.9, as users set it for a brief training.
TRAINING = {"small": (40, 5, 32, 8), "kerasio": (40, 4, 64, 0), "mobilenet": (20, 4, 32, 6)}
MOBILENET_BN_MOMENTUM = 0.9
HOLDOUT = 0.15
NOTES = "## Notes (written after the run, not by the script)"
EXTRA: dict = {}  # optimize options every run gets (--structured-allocate, --structured-search)
TABLES: dict = {}  # config tables every run gets (--structured-levels: {"structured": {"levels": [...]}})


def small_cnn(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ]
    )


def keras_io_convnet(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )


def mobilenet(keras):
    return keras.applications.MobileNetV2(
        input_shape=(MOBILENET_SIDE, MOBILENET_SIDE, 3), alpha=0.35, weights=None, classes=10
    )


def images() -> tuple[np.ndarray, np.ndarray, str]:
    if FASHION.exists():
        data = np.load(FASHION)
        return data["x"][..., None].astype(np.float32), data["y"].astype(np.int64), "Fashion-MNIST sample"
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (1000, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 1000), "random images"


def upscaled(x: np.ndarray) -> np.ndarray:
    """28x28 grey images as MobileNetV2 inputs: 3x nearest upscaling, zero border to 96x96, 3 channels, [-1, 1]."""
    big = x.repeat(3, axis=1).repeat(3, axis=2)
    pad = (MOBILENET_SIDE - big.shape[1]) // 2
    big = np.pad(big, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return (np.repeat(big, 3, axis=-1) / 127.5 - 1.0).astype(np.float32)


def weights_gzip(model) -> int:
    """gzip -9 of the model's float32 weights, concatenated: the baseline of the 12x target (bench_cnn's)."""
    raw = b"".join(np.asarray(w, np.float32).tobytes() for w in model.get_weights())
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


def prepared(key: str, folder: Path, seed: int | None = None):
    """(model path, Dataset, float32 weights gzip, training) of one benchmark model, saved as users save;
    ``seed``: the book network trained here with this seed (bench_budget's recipe), else the stored one."""
    import keras

    from deploykit.data.dataset import load_dataset
    from deploykit.io.inputs import as_dataset
    from deploykit.io.models import load_model, save_model

    if key == "book" and seed is not None:
        from bench_budget import train

        data, path = load_dataset(str(FASHION)), folder / f"book_{seed}.keras"
        if path.exists():  # --work: trained by an earlier run with this seed
            return str(path), data, weights_gzip(load_model(str(path))), "15 (early stopping), reused"
        model = train(BOOK_KIND, data, seed)
        path = save_model(model, path)
        return str(path), data, weights_gzip(model), "15 (early stopping)"
    if key == "book":
        return str(BOOK), load_dataset(str(FASHION)), weights_gzip(load_model(BOOK)), 0
    x, y, _ = images()
    if key == "mobilenet":
        x, y = upscaled(x[:MOBILENET_ROWS]), y[:MOBILENET_ROWS]
    data = as_dataset((x, y))
    keras.utils.set_random_seed(0 if seed is None else seed)  # --seeds: one training per seed, the same splits
    model = {"small": small_cnn, "kerasio": keras_io_convnet, "mobilenet": mobilenet}[key](keras)
    if key == "mobilenet":
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = MOBILENET_BN_MOMENTUM
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    training = fit(keras, model, data, *TRAINING[key])
    path = folder / (f"{key}.keras" if seed is None else f"{key}_{seed}.keras")
    model.save(path)
    return str(path), data, weights_gzip(model), training


def fit(keras, model, data, epochs: int, patience: int, batch: int, start: int) -> str:
    """Train to a real accuracy: early stopping (best weights back) on the last ``HOLDOUT`` of the training split,
    which neither optimize's validation decisions nor its test confirmation use. Returns what it did, as text."""
    stop = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=patience, restore_best_weights=True, mode="max", start_from_epoch=start
    )
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_split=HOLDOUT,
        epochs=epochs,
        batch_size=batch,
        verbose=0,
        callbacks=[stop],
    ).history
    best = int(stop.best_epoch)  # the weights restored: the best holdout accuracy from epoch ``start`` on
    return (
        f"{len(history['val_accuracy'])} of at most {epochs} (batch {batch}; early stopping from epoch {start + 1}, "
        f"patience {patience}, best weights kept: epoch "
        f"{best + 1}, holdout accuracy {100 * history['val_accuracy'][best]:.1f}% on {HOLDOUT:.0%} of the "
        "training split)"
    )


def timed(files: dict[str, Path], x: np.ndarray, threads: int = 1) -> dict[str, tuple[float, float]]:
    """(batch-1 ms, batch-256 ms) per ONNX file, ``threads`` intra-op threads (0: onnxruntime's default), the calls
    interleaved so load hits all alike.

    The fastest of the calls, not their median: on a 2-core machine shared by several jobs, other processes only
    ever add time to a call, and with 9 calls at batch 256 the medians of one run varied 4x for the same graph
    (a call of about 1.5 ms is repeated until each file has had ``SECONDS_PER_FILE`` of calls)."""
    import onnxruntime as ort

    from deploykit.export.runtimes import interleaved_fastest

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    out: dict[str, list[float]] = {k: [0.0, 0.0] for k in sessions}
    for batch, repeats, slot in ((1, REPEATS_B1, 0), (256, REPEATS_B256, 1)):
        xb = np.resize(x, (batch, *x.shape[1:]))
        calls = {k: (lambda s=s, xb=xb: s.run(None, {s.get_inputs()[0].name: xb})) for k, s in sessions.items()}
        for k, seconds in interleaved_fastest(calls, repeats, SECONDS_PER_FILE, MAX_REPEATS).items():
            out[k][slot] = 1000 * seconds
    return {k: (v[0], v[1]) for k, v in out.items()}


def run_model(key: str, out: Path, holdouts: tuple = (None,)) -> list[dict]:
    """One model's optimize run per fine-tuning holdout (``tune_holdout``; None: the default) on the same trained
    model, its recommendations and every shipped file timed at 1 thread."""
    with tempfile.TemporaryDirectory() as tmp:
        model = prepared(key, Path(tmp))
        return [measured(key, Path(tmp) / f"holdout_{held}", out, model, holdout=held) for held in holdouts]


def run_seed(
    seed: int,
    out: Path,
    shares: list[float | None],
    work: Path | None = None,
    holdouts: tuple = (None,),
    key: str = "book",
) -> list[dict]:
    """Model ``key`` trained with ``seed`` (the book network by bench_budget's recipe, a convnet by :data:`TRAINING`),
    then one optimize run per structured budget share (None: the default) and fine-tuning holdout (``tune_holdout``;
    None: the default), each on the same trained model (its plots are not copied). ``work``: the trained book models
    are kept there and reused by a later run (the optimize runs always start afresh)."""
    with tempfile.TemporaryDirectory() as tmp:
        if work:
            work.mkdir(parents=True, exist_ok=True)
        model = prepared(key, work or Path(tmp), seed)
        return [
            measured(key, Path(tmp) / f"share_{share}_holdout_{held}", out, model, seed, share, held)
            for share in shares
            for held in holdouts
        ]


def measured(
    key: str,
    folder: Path,
    out: Path,
    model,
    seed: int | None = None,
    share: float | None = None,
    holdout: float | None = None,
) -> dict:
    """optimize on a prepared model (``share``: ``structured_budget_share``; ``holdout``: ``tune_holdout``), its
    files timed at 1 thread."""
    from deploykit.export import export_onnx
    from deploykit.io.models import load_model
    from deploykit.pipeline import optimize
    from deploykit.pipeline.config import OptimizeConfig

    folder.mkdir(parents=True, exist_ok=True)
    path, data, baseline, epochs = model
    extra = {**EXTRA, **({} if share is None else {"structured_budget_share": share})}
    extra |= {} if holdout is None else {"tune_holdout": holdout}
    start, cpu = time.perf_counter(), time.process_time()
    result = optimize(
        path,
        data,
        out_dir=folder / "out",
        mc=False,
        formats="onnx,tflite",
        quantize=QUANTIZE,
        objective="latency",
        config=OptimizeConfig.from_dict(TABLES) if TABLES else None,
        **OPTIONS[key],
        **extra,
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    report = json.loads((result.out_dir / "report.json").read_text())
    if seed is not None or holdout is not None:  # why a run shipped what it did (which budget rejected a file on test)
        held = "" if holdout is None else f"_holdout{holdout}"
        shutil.copy(result.out_dir / "report.json", out / f"report_seed{seed}_share{share}{held}.json")
    for plot, slug in (("latency_vs_accuracy.png", "latency"), ("accuracy_vs_size.png", "size")):
        if seed is None and holdout is None and (result.out_dir / plot).exists():
            shutil.copy(result.out_dir / plot, out / f"faster_{key}_{slug}.png")
    original = export_onnx(load_model(path), folder / "original.onnx", quantization="float32").path
    shipped = [r for r in result.shipped if r.format == "onnx" and "/" not in r.file]
    onnx_files = {r.file: result.out_dir / r.file for r in shipped}
    times = timed({"original": original, **onnx_files}, data.x_test)
    default = timed({"original": original, **onnx_files}, data.x_test, threads=0)
    return {
        "key": key,
        "seed": seed,
        "budget_share": share,
        "tune_holdout": holdout,
        "model": TITLES[key],
        "epochs_trained": epochs,
        "original_accuracy": (report.get("original") or {}).get("accuracy"),
        "weights_gzip": baseline,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "options": OPTIONS[key],
        "structured_levels": (TABLES.get("structured") or {}).get("levels"),
        "plan": report.get("plan"),  # a time budget's epochs per try, set by the epoch time measured under load
        "structured": _structured(result),
        "steps": [f"{s.step}: {s.reason}" for s in result.steps if s.step in ("structured", "sparsity (prune)")],
        "magnitude": _step_test(next((s for s in result.steps if s.step == "sparsity (prune)"), None)),
        "tries": [_try(t) for t in result.tries],
        "files": _files(result, report, times, baseline, default),
        "recommended": (report.get("objective") or {}).get("recommended", {}),
        "fallback": report.get("fallback"),  # the user's folded model shipped where nothing compressed did
    }


def _try(t) -> dict:
    """One try of the run's searches: its setting, validation change with its interval, its validation NLL change
    (held to max_nll_increase), kept, and why not (the note leads with what it missed: accuracy or NLL)."""
    return {
        "setting": t.setting,
        "val_change": t.accuracy_change,
        "ci95": t.ci95,
        "nll_change": t.nll_change,
        "kept": t.kept,
        "note": t.note,
    }


def _structured(result) -> dict:
    """The structured step: the share kept (0: none) and the shares tried."""
    step = next((s for s in result.steps if s.step == "structured"), None)
    detail = getattr(step, "detail", None)
    kept = getattr(detail, "kept", None) if step is not None and step.status.value == "done" else None
    tried = list(getattr(detail, "tried", []) or [])
    return {"kept": kept or 0.0, "tried": tried, "reason": step.reason if step else "", **_step_test(step)}


def _step_test(step) -> dict:
    """The kept structured model's test change vs the model the step took (the original) with its interval: what
    the validation decision is confirmed against."""
    if step is None or step.before is None or step.after is None or step.after.accuracy is None:
        return {}
    return {"test_change": step.after.accuracy - step.before.accuracy, "test_ci95": step.ci95}


def _files(result, report: dict, times: dict, baseline: int, default: dict | None = None) -> list[dict]:
    """Every shipped ONNX / TFLite file: kept settings, test change, speed-ups (ONNX: 1 thread here, and onnxruntime's
    default threads in ``default``) and gzip ratio."""
    cands = {c["file"]: c for c in (report.get("objective") or {}).get("candidates", [])}
    f1, f256 = times["original"]
    default = default or {}
    rows = []
    for r in result.shipped:
        if r.format not in ("onnx", "tflite") or "/" in r.file:
            continue
        own, dflt = times.get(r.file), default.get(r.file)
        cand = cands.get(r.file, {})
        rows.append(
            {
                "file": r.file,
                "format": r.format,
                "sparsity": r.sparsity,
                "quantization": r.quantization,
                "test_change": r.accuracy_change,
                "ci95": r.ci95,
                "gzip": r.gzip_bytes,
                "gzip_ratio": baseline / r.gzip_bytes if r.gzip_bytes else None,
                "b1_speedup": f1 / own[0] if own else cand.get("speedup_b1"),
                "b256_speedup": f256 / own[1] if own else cand.get("speedup_batch"),
                "b1_ms": own[0] if own else cand.get("b1_ms"),
                "b256_ms": own[1] if own else cand.get("batch_ms"),
                "timed": "1 thread" if own else "run (LiteRT, default threads)",
                "b1_speedup_default": default["original"][0] / dflt[0] if dflt else None,
                "b256_speedup_default": default["original"][1] / dflt[1] if dflt else None,
                "slower": cand.get("slower", ""),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TITLES), help="comma-separated: " + ", ".join(TITLES))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    parser.add_argument(
        "--seeds", default="", help="comma-separated seeds: train the book network once per seed (faster_seeds.md)"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the models of the existing faster.json in --out that this run does not re-run (their rows as "
        "they were measured), and write the results after every model",
    )
    parser.add_argument(
        "--budget-shares",
        default="",
        help="with --seeds: comma-separated [structured] budget_share values, one optimize run each on the same "
        "trained model (side by side; default: the default share only)",
    )
    parser.add_argument(
        "--structured-allocate", choices=("uniform", "cost"), default=None, help="optimize's structured_allocate"
    )
    parser.add_argument(
        "--structured-search", choices=("bisect", "top-down"), default=None, help="optimize's structured_search"
    )
    parser.add_argument(
        "--structured-levels",
        default="",
        help="comma-separated shares an 'auto' structured search chooses among ([structured] levels; default: the "
        "search's own)",
    )
    parser.add_argument(
        "--tune-holdouts",
        default="",
        help="comma-separated tune_holdout values (0: fine-tunes stop early on the validation rows), one optimize "
        "run each on the same trained model, side by side (holdout_tables.py writes results/holdout.md)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an optimize option for every model of this run, over OPTIONS (e.g. time_budget=6; KEY= drops the "
        "model's own KEY, e.g. epochs= for optimize's default fine-tuning epochs); repeatable",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="with --seeds: keep the trained models here and reuse them when rerun"
    )
    args = parser.parse_args()
    for setting in args.set:
        overridden(setting)
    if args.structured_allocate:
        EXTRA["structured_allocate"] = args.structured_allocate
    if args.structured_search:
        EXTRA["structured_search"] = args.structured_search
    if args.structured_levels:
        TABLES["structured"] = {"levels": [float(v) for v in args.structured_levels.split(",") if v.strip()]}
    args.out.mkdir(parents=True, exist_ok=True)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    if "book" in keys and not (BOOK.exists() and FASHION.exists()):
        print("the book's model or the Fashion sample is absent: its rows are skipped")
        keys.remove("book")
    holdouts = tuple(float(v) for v in args.tune_holdouts.split(",") if v.strip()) or (None,)
    if args.seeds:
        shares = [float(v) for v in args.budget_shares.split(",") if v.strip()] or [None]
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
        return run_seeds(seeds, keys, args.out, shares, args.work, holdouts)
    kept = merged_runs(args.out / "faster.json", keys) if args.merge else []
    notes = kept_notes(args.out / "faster.md") if args.merge else ""
    runs: list[dict] = []
    source, machine = images()[2], platform.processor() or platform.machine()
    for key in keys:
        print(f"--- {TITLES[key]}", flush=True)
        runs += run_model(key, args.out, holdouts)
        if args.merge or key == keys[-1]:
            every = in_order(kept + runs)
            write_results(
                "faster",
                {"machine": machine, "data": source, "runs": every},
                render(every, source) + notes,
                args.out,
                quiet=key != keys[-1],
            )


def overridden(setting: str) -> None:
    """Apply one ``--set KEY=VALUE`` to every model's :data:`OPTIONS` (a number where it reads as one; an empty
    VALUE drops the key, so optimize's own default applies)."""
    key, _, text = setting.partition("=")
    for options in OPTIONS.values():
        options.pop(key.strip(), None)
        if text.strip():
            options[key.strip()] = json.loads(text) if text.strip()[0] in "0123456789-[{" else text.strip()


def merged_runs(path: Path, keys: list[str]) -> list[dict]:
    """The runs of an earlier faster.json for models not in ``keys`` (this run re-measures those)."""
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text()).get("runs", []) if r["key"] not in keys]


def kept_notes(path: Path) -> str:
    """The hand-written notes section at the end of an earlier faster.md (from ``NOTES`` on), to keep under --merge:
    they may name rows this run does not touch (check the ones it re-measures)."""
    text = path.read_text() if path.exists() else ""
    return "" if NOTES not in text else "\n\n" + text[text.index(NOTES) :].rstrip("\n")


def in_order(runs: list[dict]) -> list[dict]:
    """Runs in the table's model order (TITLES)."""
    order = list(TITLES)
    return sorted(runs, key=lambda r: order.index(r["key"]) if r["key"] in order else len(order))


def run_seeds(
    seeds: list[int], keys: list[str], out: Path, shares: list[float | None], work: Path | None, holdouts: tuple
) -> None:
    """Each model once per seed, one optimize run per structured budget share; the results written after every
    seed (a long run keeps what finished): ``faster_seeds`` for the book network alone, else
    ``faster_seeds_<models>``."""
    if "mobilenet" in keys:
        raise SystemExit("--seeds: MobileNetV2 costs too much per training; give book, small or kerasio")
    name = "faster_seeds" if keys == ["book"] else "faster_seeds_" + "_".join(keys)
    source, runs = images()[2], []
    for key in keys:
        for seed in seeds:
            print(f"--- {TITLES[key]}, seed {seed}", flush=True)
            runs += run_seed(seed, out, shares, work, holdouts, key)
            data = {"machine": platform.processor() or platform.machine(), "data": source, "runs": runs}
            last = key == keys[-1] and seed == seeds[-1]
            write_results(name, data, render_seeds(runs, source), out, quiet=not last)


if __name__ == "__main__":
    main()
