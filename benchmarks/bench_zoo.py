"""The Keras Applications zoo (issue 20): every ``keras.applications`` constructor through deploykit export.

The constructors are listed from ``keras.applications`` itself (every public class-cased callable), so a
new architecture in a new Keras joins the table without an edit here. Each runs in its own process with
a timeout, so one hang or crash costs its row, not the table. Per architecture:

1. Keras 3 builds it as a user would (``weights=None``: no download), at the smallest input it accepts
   (32x32, else the first of 71, 75, 96... it takes) with ``classes=3``; BatchNorm statistics (and ConvNeXt's
   LayerScale) get non-trivial values so the fold and the comparison mean something; it is saved as
   ``model.keras``. Architectures are run smallest first (:func:`ordered`), each result written as it comes, so
   a run stopped at its time limit has measured the most it could; ``--size-cap`` lists bigger ones as skipped.
2. ``deploykit.load_model`` imports the file (the Keras 3 import, checked against Keras 3 on random inputs),
   and deploykit writes float32 ONNX + TFLite: up to :data:`EXTRAS_CAP` parameters ``export_bundle`` also
   validates them on generated inputs (what ``deploykit export model.keras --out DIR`` runs), above it
   ``export_variant`` writes them (the exporters' own output checks): exit ``ok``, or ``refused`` with the
   one-line reason.
3. The float32 ONNX (onnxruntime) and TFLite (LiteRT) outputs are compared with **Keras 3's own** outputs
   on the same generated inputs (standard normal): max |difference| (the outputs are probabilities).
4. ``fold_batchnorm``: BatchNorm layers folded; int8 (architectures up to :data:`EXTRAS_CAP` parameters):
   ``int8-dynamic`` ONNX and ``int8-full`` TFLite (calibrated on generated inputs), Δ = share of generated
   inputs whose argmax differs from Keras 3's.
5. Models with dropout (up to :data:`EXTRAS_CAP` parameters): the MC Dropout ONNX graph is built and run
   (drop-connect ``noise_shape`` included).

Writes ``benchmarks/results/zoo.json`` and ``zoo.md``. Run from the repository root:

    python benchmarks/bench_zoo.py [--only MobileNetV3Small,ConvNeXtTiny] [--timeout 900] [--size-cap 40e6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, write_results  # noqa: E402  (puts the repository on sys.path)

#: Architectures above this many parameters (as built here: classes=3, smallest input) are not run (0: no cap;
#: the run goes smallest first, so the biggest are the ones a time limit leaves out).
SIZE_CAP = 0
#: The extras (the float export validated on 1,000 generated inputs as ``deploykit export`` does, int8: two more
#: conversions, one calibrated, and the MC graph) only up to this many parameters: on 2 shared cores they double a
#: big architecture's time, and their code path is the same for every architecture. Every architecture gets the
#: float tier (float32 ONNX + TFLite written by deploykit, diff against Keras 3, the fold).
EXTRAS_CAP = 4_000_000
TIMEOUT = 2400.0
#: Input sides tried in order: keras.applications refuses inputs below an architecture's minimum.
SIDES = (32, 71, 75, 96, 128, 224)
SAMPLES = 32  # generated inputs the artifacts are compared with Keras 3 on
TARGET = 1e-4  # float32 ONNX vs Keras 3
CHAOS = 1e-3  # relative change of the last layer's input under a 1e-6 relative input change: above it, chaotic
RESULT = "ZOO-RESULT "
THREADS = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def constructors() -> list[str]:
    """Every public architecture constructor of keras.applications (class-cased callables), sorted."""
    import keras

    apps = keras.applications
    return sorted(n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n)))


# --- one architecture, in its own process -----------------------------------------------------


def build(name: str, folder: Path, size_cap: float = SIZE_CAP, gamma: float | None = None) -> dict:
    """Build ``name`` in Keras 3 at its smallest input, give its statistics non-trivial values, save it; with
    ``gamma``, the residual branches are scaled down as :func:`scale_residual_branches` says."""
    import keras
    import numpy as np

    ctor = getattr(keras.applications, name)
    keras.utils.set_random_seed(0)  # the same weights in every run: a row can be re-run and compared
    for side in SIDES:
        try:
            model = ctor(weights=None, input_shape=(side, side, 3), classes=3)
            break
        except ValueError:
            continue
    else:
        raise RuntimeError(f"{name}: no input side of {SIDES} accepted")
    params = int(model.count_params())
    info = {"side": side, "params": params}
    if size_cap and params > size_cap:
        return info
    randomize(model)
    x = np.random.default_rng(0).standard_normal((SAMPLES, side, side, 3)).astype(np.float32)
    info["chaos"] = chaos(model, x)
    if gamma is not None:
        info["chaos_as_built"] = info["chaos"]
        info["residual_branches"] = scale_residual_branches(model, gamma)
        info["chaos"] = chaos(model, x)
    info["reference"] = np.asarray(model(x, training=False), np.float64)  # eager: no predict function traced
    info["x"] = x
    model.save(folder / "model.keras")
    return info


def chaos(model, x) -> float:
    """How far the features the classifier reads (the last layer's input) move, relative to their RMS, when the
    inputs change by 1e-6 of themselves: above :data:`CHAOS`, float rounding alone (two implementations' summation
    orders) decides the outputs wherever two classes are close, and no converter can match them. Random weights
    can do that to a deep network: EfficientNetV2M as built here moves by 3 times the features' RMS (0.38 with its
    BatchNorm statistics set from the data instead, so it is not the statistics' draw); layer by layer, tf_keras and
    Keras 3 differ by 1e-7 at the first block and by 2.5 % of the features at the last, behind saturated
    probabilities that flip on a near tie."""
    import keras
    import numpy as np

    features = keras.Model(model.inputs, model.layers[-1].input)
    base = np.asarray(features(x, training=False), np.float64)
    moved = np.asarray(features(x * np.float32(1 + 1e-6), training=False), np.float64)
    return float(np.abs(moved - base).max() / max(np.sqrt(np.mean(base**2)), 1e-12))


def randomize(model, seed: int = 0) -> None:
    """BatchNorm moving statistics, gamma, beta and ConvNeXt's LayerScale gamma drawn near their trained scale."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            values = []
            for w in layer.weights:
                short = w.path.split("/")[-1]
                draw = {
                    "gamma": lambda s: rng.uniform(0.8, 1.2, s),
                    "beta": lambda s: rng.normal(0, 0.1, s),
                    "moving_mean": lambda s: rng.normal(0, 0.1, s),
                    "moving_variance": lambda s: rng.uniform(0.8, 1.2, s),
                }[short]
                values.append(draw(tuple(w.shape)).astype("float32"))
            layer.set_weights(values)
        elif kind == "LayerScale":
            layer.set_weights([rng.uniform(0.5, 1.0, tuple(w.shape)).astype("float32") for w in layer.weights])


def scale_residual_branches(model, factor: float) -> int:
    """Multiply by ``factor`` the gamma of every BatchNormalization whose output a residual ``Add`` reads (through
    a Dropout): how trained residual networks look (their residual branches end small, and zero-initialising that
    gamma is the standard recipe, Goyal et al. 2017), where random draws at gamma ~1 let the branches grow block
    after block until float rounding decides the outputs (:func:`chaos`). Only for rows named with
    ``--residual-gamma``; returns how many layers were scaled."""
    scaled = 0
    for layer in _all_layers(model):
        if type(layer).__name__ != "Add":
            continue
        for tensor in layer.input if isinstance(layer.input, list) else [layer.input]:
            source = tensor._keras_history.operation
            while type(source).__name__ == "Dropout":
                source = source.input._keras_history.operation
            if type(source).__name__ == "BatchNormalization" and source.scale:
                weights = source.get_weights()
                weights[0] = weights[0] * factor
                source.set_weights(weights)
                scaled += 1
    return scaled


def _all_layers(model):
    for layer in model.layers:
        yield from _all_layers(layer) if hasattr(layer, "layers") else (layer,)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:480]}"


def run_one(
    name: str, folder: Path, size_cap: float, extras_cap: float = EXTRAS_CAP, gamma: float | None = None
) -> dict:
    """The row of one architecture (runs in a child process): the float tier always, the extras under the cap."""
    import numpy as np

    import deploykit.backend  # noqa: F401  (TF set up for tf_keras first, as deploykit does)

    row: dict = {"name": name}
    start = time.perf_counter()
    info = build(name, folder, size_cap, gamma)
    row.update(side=info["side"], params=info["params"], build_seconds=round(time.perf_counter() - start, 1))
    row["chaos"] = info.get("chaos")
    if gamma is not None:
        row.update(
            residual_gamma=gamma, chaos_as_built=info["chaos_as_built"], residual_branches=info["residual_branches"]
        )
    if "x" not in info:
        row.update(
            exit="skipped",
            reason=f"{info['params'] / 1e6:.0f} M parameters, over the benchmark's size cap of {size_cap / 1e6:.0f} M",
        )
        return row
    x, reference = info["x"], info["reference"]
    from deploykit import export_variant, fold_batchnorm, load_model
    from deploykit.export.runtimes import OnnxRunner, TfliteRunner

    extras = info["params"] <= extras_cap
    start = time.perf_counter()
    try:
        model = load_model(folder / "model.keras")
        row["import_seconds"] = round(time.perf_counter() - start, 1)
        _export_float(model, folder / "out", validated=extras)
    except Exception as exc:  # noqa: BLE001  (the row records any refusal)
        row.update(exit="refused", reason=one_line(exc), seconds=round(time.perf_counter() - start, 1))
        return row
    row.update(exit="ok", seconds=round(time.perf_counter() - start, 1), validated=extras)
    onnx = OnnxRunner(folder / "out" / "model.onnx").predict(x)
    tflite = TfliteRunner(folder / "out" / "model.tflite").predict(x)
    row["onnx_diff"] = float(np.abs(onnx - reference).max())
    row["tflite_diff"] = float(np.abs(tflite - reference).max())
    row["tf_keras_diff"] = float(np.abs(model(x, training=False).numpy() - reference).max())
    row.update(_fold(fold_batchnorm, model, x, reference))
    if extras:
        row.update(_int8(export_variant, model, x, reference, folder, OnnxRunner, TfliteRunner))
        row.update(_mc(model, x))
    else:
        cap = f"{extras_cap / 1e6:.0f} M"
        row["int8"] = f"over {cap} parameters: export not validated on generated inputs, no int8, no MC (the cap)"
    return row


def _export_float(model, out: Path, validated: bool) -> None:
    """float32 ONNX + TFLite: validated as ``deploykit export`` does (``export_bundle``: 1,000 generated inputs in
    each runtime, latency), or only written by deploykit's exporters (their own output checks) when not
    ``validated``: the table's diff against Keras 3 is measured on the same files either way."""
    from deploykit import export_bundle, export_variant
    from deploykit.export import ExportConfig

    if validated:
        export_bundle(model, None, out, ExportConfig(formats=("onnx", "tflite"), quantize=("float32",), repeats=1))
        return
    out.mkdir(parents=True, exist_ok=True)
    export_variant(model, "onnx", "float32", out / "model.onnx")
    export_variant(model, "tflite", "float32", out / "model.tflite")


def _fold(fold_batchnorm, model, x, reference) -> dict:
    import numpy as np

    try:
        folded, report = fold_batchnorm(model)
    except Exception as exc:  # noqa: BLE001
        return {"fold": f"refused: {one_line(exc)}"}
    bn = sum(type(layer).__name__ == "BatchNormalization" for layer in model.layers)
    return {
        "bn_layers": bn,
        "bn_folded": sum(f.kind == "BatchNormalization" for f in report.folded),
        "fold_diff": float(np.abs(folded(x, training=False).numpy() - reference).max()),
    }


def _int8(export_variant, model, x, reference, folder: Path, onnx_runner, tflite_runner) -> dict:
    import numpy as np

    out = {}
    classes = reference.argmax(axis=1)
    for key, fmt, quant, runner in (
        ("int8_onnx", "onnx", "int8-dynamic", onnx_runner),
        ("int8_tflite", "tflite", "int8-full", tflite_runner),
    ):
        path = folder / f"model_{quant}.{fmt}"
        start = time.perf_counter()
        try:
            export_variant(model, fmt, quant, path, x)
            got = runner(path).predict(x)
            out[key] = {
                "delta": float(np.mean(got.argmax(axis=1) != classes)),
                "seconds": round(time.perf_counter() - start, 1),
            }
        except Exception as exc:  # noqa: BLE001
            out[key] = {"error": one_line(exc)}
    return out


def _mc(model, x) -> dict:
    """Build and run the MC Dropout graph of a model with dropout (samples 4, 2 inputs)."""
    from deploykit.core.graph import graph_from_model
    from deploykit.uncertainty.mc_graph import MCConfig, build_mc_graph, dropout_layers

    graph = graph_from_model(model)
    drops = dropout_layers(graph)
    if not drops:
        return {"mc": "no dropout"}
    try:
        import onnxruntime as ort

        proto = build_mc_graph(graph, MCConfig(samples=4))
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, {"input": x[:2]})
        noise = sum(s.config.get("noise_shape") is not None for s in drops)
        return {"mc": f"ok ({len(drops)} dropout layers, {noise} with a noise_shape)"}
    except Exception as exc:  # noqa: BLE001
        return {"mc": f"refused: {one_line(exc)}"}


# --- the table -------------------------------------------------------------------------------


def run_child(name: str, timeout: float, size_cap: float, gamma: float | None = None) -> dict:
    """One architecture in a fresh process; a timeout or a crash is its row's result."""
    env = {**os.environ, **THREADS, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    start, cpu = time.perf_counter(), _children_cpu()
    with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as tmp:
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, "--folder", tmp, "--size-cap", str(size_cap)]
                + (["--residual-gamma", str(gamma)] if gamma is not None else []),
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=ROOT,
            )
        except subprocess.TimeoutExpired:
            used = round(_children_cpu() - cpu, 1)  # the killed child, waited for by subprocess.run
            return {
                "name": name,
                "exit": "timeout",
                "reason": f"no result within {timeout:.0f} s wall ({used:.0f} CPU s used: the machine's load decides)",
                "wall_seconds": round(time.perf_counter() - start, 1),
                "cpu_seconds": used,
            }
    cpu = round(_children_cpu() - cpu, 1)  # the child and its runtime worker: what the row cost, whatever the load
    lines = [l for l in done.stdout.splitlines() if l.startswith(RESULT)]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {
            "name": name,
            "exit": "crashed",
            "reason": f"exit {done.returncode}: {tail[:240]}",
            "wall_seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": cpu,
        }
    row = json.loads(lines[-1][len(RESULT) :])
    return {**row, "wall_seconds": round(time.perf_counter() - start, 1), "cpu_seconds": cpu}


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and theirs."""
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _num(value, fmt=".1e") -> str:
    return "—" if value is None else format(value, fmt)


def _int8_cell(entry) -> str:
    if not entry:
        return "—"
    return f"{100 * entry['delta']:.0f}%" if "delta" in entry else "error"


def _chaotic(row: dict) -> str:
    """The reason a row cannot be judged at float precision: the network as built is chaotic (:func:`chaos`)."""
    value = row.get("chaos")
    if value is None or value <= CHAOS:
        return ""
    return (
        f"chaotic as built: a 1e-6 relative change of the inputs moves Keras 3's own last features by {value:.2g} "
        "of their RMS, so float rounding decides near-tied outputs; no implementation can match it to 1e-5"
    )


def _scaled(row: dict) -> str:
    """What a row run with ``--residual-gamma`` changed, and what the network was as built."""
    if row.get("residual_gamma") is None:
        return ""
    return (
        f"residual branches' last BatchNorm gamma x {row['residual_gamma']:g} ({row['residual_branches']} layers; "
        f"`bench_zoo.scale_residual_branches`): chaos {row['chaos']:.1g}, as built {row['chaos_as_built']:.1g}"
    )


def markdown(rows: list[dict], total: float, size_cap: float, note: str = "") -> str:
    ran = [r for r in rows if r.get("exit") == "ok"]
    within = [r for r in ran if r.get("onnx_diff") is not None and r["onnx_diff"] <= TARGET]
    listed = len(rows)
    missing = [r for r in rows if r.get("exit") == "not run yet"]
    chaotic = [r for r in rows if _chaotic(r)]
    scaled = [r["name"] for r in rows if _scaled(r)]
    lines = [
        "# The Keras Applications zoo through deploykit export",
        "",
        (
            f"Every `keras.applications` constructor of Keras {rows[0].get('keras', '') if rows else ''} ({listed}, "
            "listed "
            "programmatically), built in Keras 3 with `weights=None`, `classes=3` at the smallest input it accepts, "
            "BatchNorm statistics randomized, saved as `.keras`, imported by deploykit and exported (float32 ONNX + "
            f"TFLite; up to {EXTRAS_CAP / 1e6:.0f} M parameters validated as `deploykit export` does, then int8 and "
            "MC). Differences are against **Keras 3's own outputs** (probabilities) "
            f"on {SAMPLES} standard-normal inputs. One process per architecture, each with a timeout; 2 shared CPU "
            "cores."
        ),
        "",
        (
            f"**{len(within)} of {listed}** architectures export float32 ONNX within {TARGET:g} of Keras "
            f"({len(ran)} exported, {len(missing)} not reached in this run, {len(chaotic)} chaotic as run: not "
            "measurable at float precision; the target is every architecture). "
            + (
                f"{', '.join(scaled)}: run with their residual branches scaled down as trained networks have them "
                "(`--residual-gamma`), because as built their own float rounding decides their outputs (the row "
                "gives both). "
                if scaled
                else ""
            )
            + "Architectures run smallest first (ImageNet parameter count), so the ones a run's time limit leaves out "
            "are the biggest, whose families' smaller members are in the table."
            + (f" Architectures over {size_cap / 1e6:.0f} M parameters are listed as skipped." if size_cap else "")
        ),
        "",
        "| architecture | input | params | exit | wall s (loaded) / CPU s | BN folded | ONNX diff | TFLite diff | "
        "int8 Δ ONNX / TFLite | MC Dropout | skipped / reason |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        side = f"{r['side']}²" if r.get("side") else "—"
        params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else "—"
        folded = f"{r['bn_folded']} / {r['bn_layers']}" if "bn_folded" in r else r.get("fold", "—")
        int8 = (
            f"{_int8_cell(r.get('int8_onnx'))} / {_int8_cell(r.get('int8_tflite'))}" if r.get("exit") == "ok" else "—"
        )
        errors = [
            f"{k}: {r[k]['error']}"
            for k in ("int8_onnx", "int8_tflite")
            if isinstance(r.get(k), dict) and "error" in r[k]
        ]
        earlier = "measured in an earlier session's run" if r.get("session") == "previous" else ""
        parts = [_chaotic(r), _scaled(r), r.get("reason", ""), *errors, r.get("int8", ""), earlier]
        reason = "; ".join(filter(None, parts)).replace("|", "\\|")
        lines.append(
            f"| {r['name']} | {side} | {params} | {r.get('exit')} | {_num(r.get('wall_seconds'), '.0f')} / "
            f"{_num(r.get('cpu_seconds'), '.0f')} | {folded} "
            f"| {_num(r.get('onnx_diff'))} | {_num(r.get('tflite_diff'))} | {int8} | {r.get('mc', '—')} | {reason} |"
        )
    lines += [
        "",
        (
            "Columns: *wall s / CPU s*: the architecture's whole process (Keras 3 build and save, import, export and "
            "validation, fold, int8, MC) and its runtime worker; wall time on a machine shared by other work (loaded), "
            "CPU seconds (user + system) whatever the load. *BN folded*: BatchNormalization layers `fold_batchnorm` "
            "folded / present after import. "
            "*int8 Δ*: share of the generated inputs whose argmax differs from Keras 3's, for `int8-dynamic` ONNX and "
            "`int8-full` TFLite (calibrated on the same generated inputs); randomly initialized networks with 3 "
            "classes "
            "have near-tied outputs, so this measures quantization noise, not accuracy. *MC Dropout*: the MC graph "
            "built "
            "and run (drop-connect `noise_shape` layers sampled)."
        ),
        "",
        f"Total: {total:.0f} s.",
    ]
    if missing:
        lines += [
            "",
            f"Not reached in this run ({len(missing)}): the run stops at its time limit and the table is "
            "written after every architecture; `python benchmarks/bench_zoo.py --only NAME,...` runs the rest.",
        ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated constructor names (default: all)")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per architecture")
    p.add_argument("--size-cap", type=float, default=SIZE_CAP, help="parameters above which an architecture is skipped")
    p.add_argument("--render", action="store_true", help="rewrite zoo.md from zoo.json (no run), with --note")
    p.add_argument("--note", default="", help="a sentence about this run's machine, kept in zoo.json and zoo.md")
    p.add_argument("--merge", default="", help="comma-separated zoo.json files of runs side by side: one table")
    p.add_argument(
        "--residual-gamma",
        type=float,
        help="scale the residual branches' last BatchNorm gamma by this (trained-like; rows chaotic as built)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        row = run_one(args.child, Path(args.folder), args.size_cap, gamma=args.residual_gamma)
        print(RESULT + json.dumps(row), flush=True)
        return 0
    if args.merge:
        data = merged([json.loads(Path(f).read_text()) for f in args.merge.split(",") if f])
        data["note"] = args.note or data.get("note", "")
        write_results("zoo", data, markdown(data["rows"], data["seconds"], data["size_cap"], data["note"]), quiet=True)
        return 0
    if args.render:
        data = json.loads((RESULTS / "zoo.json").read_text())
        data["note"] = args.note or data.get("note", "")
        write_results("zoo", data, markdown(data["rows"], data["seconds"], data["size_cap"], data["note"]), quiet=True)
        return 0
    import keras

    every = ordered(constructors())
    names = [n.strip() for n in args.only.split(",") if n.strip()] or every
    kept = {}  # --only runs the named architectures and keeps the other rows of the last table
    if args.only and (RESULTS / "zoo.json").exists():
        kept = {r["name"]: r for r in json.loads((RESULTS / "zoo.json").read_text())["rows"]}
    start = time.perf_counter()
    rows = [kept.get(n, {"name": n, "exit": "not run yet"}) for n in every]
    for name in names:
        k = every.index(name)
        rows[k] = {**run_child(name, args.timeout, args.size_cap, args.residual_gamma), "keras": keras.__version__}
        print(
            f"[{time.perf_counter() - start:6.0f}s] {name}: {rows[k].get('exit')} {rows[k].get('onnx_diff', '')} "
            f"{rows[k].get('reason', '')}",
            file=sys.stderr,
            flush=True,
        )
        save(rows, time.perf_counter() - start, args.size_cap, keras.__version__, args.note)  # survives a stop
    return 0


def merged(runs: list[dict]) -> dict:
    """Runs side by side (shards of the architecture list, one process each) as one table: per architecture, the
    last run's ``ok`` row, else its last measured row (a timeout, a refusal), else "not run yet"."""
    names = [r["name"] for r in runs[0]["rows"]]
    rows = []
    for name in names:
        found = [r for run in runs for r in run["rows"] if r["name"] == name and r.get("exit") != "not run yet"]
        ok = [r for r in found if r.get("exit") == "ok"]
        rows.append((ok or found or [{"name": name, "exit": "not run yet"}])[-1])
    within = [r for r in rows if r.get("exit") == "ok" and (r.get("onnx_diff") or 0) <= TARGET]
    return {
        **runs[-1],
        "architectures": len(rows),
        "onnx_within_target": len(within),
        "seconds": max(run["seconds"] for run in runs),
        "rows": rows,
    }


def ordered(names: list[str]) -> list[str]:
    """Smallest first, by :data:`PARAMS`: a run cut short by its time limit has measured the most architectures
    (every family's smallest member comes early); a constructor not in the table (a new Keras) goes last."""
    return sorted(names, key=lambda n: (PARAMS.get(n, float("inf")), n))


#: ImageNet parameter counts in millions, as the keras.applications documentation lists them: the order only.
PARAMS = {
    "MobileNetV3Small": 2.5, "MobileNetV2": 3.5, "MobileNet": 4.3, "EfficientNetB0": 5.3, "NASNetMobile": 5.3,
    "MobileNetV3Large": 5.4, "EfficientNetV2B0": 7.2, "EfficientNetB1": 7.9, "DenseNet121": 8.1,
    "EfficientNetV2B1": 8.2, "EfficientNetB2": 9.2, "EfficientNetV2B2": 10.2, "EfficientNetB3": 12.3,
    "DenseNet169": 14.3, "EfficientNetV2B3": 14.5, "EfficientNetB4": 19.5, "DenseNet201": 20.2,
    "EfficientNetV2S": 21.6, "Xception": 22.9, "InceptionV3": 23.9, "ResNet50": 25.6, "ResNet50V2": 25.6,
    "ConvNeXtTiny": 28.6, "EfficientNetB5": 30.6, "EfficientNetB6": 43.3, "ResNet101": 44.7, "ResNet101V2": 44.7,
    "ConvNeXtSmall": 50.2, "EfficientNetV2M": 54.4, "InceptionResNetV2": 55.9, "ResNet152": 60.4,
    "ResNet152V2": 60.4, "EfficientNetB7": 66.7, "ConvNeXtBase": 88.5, "NASNetLarge": 88.9,
    "EfficientNetV2L": 119.0, "VGG16": 138.4, "VGG19": 143.7, "ConvNeXtLarge": 197.7, "ConvNeXtXLarge": 350.1,
}  # fmt: skip


def save(rows: list[dict], total: float, size_cap: float, version: str, note: str = "") -> None:
    ok = [r for r in rows if r.get("exit") == "ok" and r.get("onnx_diff") is not None and r["onnx_diff"] <= TARGET]
    data = {
        "keras": version,
        "architectures": len(rows),
        "onnx_within_target": len(ok),
        "target": TARGET,
        "size_cap": size_cap,
        "seconds": round(total, 1),
        "note": note,
        "rows": rows,
    }
    write_results("zoo", data, markdown(rows, total, size_cap, note), quiet=True)


if __name__ == "__main__":
    sys.exit(main())
