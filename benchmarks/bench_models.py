"""Models users bring (issue 12): Keras 3 files of other shapes through `deploykit optimize` with its defaults.

Each model is built and trained in a plain Keras 3 process (no deploykit, no tf_keras: what a user of
TensorFlow >= 2.16 has), saved as a Keras 3 ``.keras`` file, then ``deploykit optimize MODEL --data DATA``
runs with defaults in its own process. Side by side in one run, per model:

- exit status, wall and CPU seconds, artifacts shipped / rejected;
- BatchNormalization layers left in the model and BatchNormalization nodes in the float32 ONNX;
- kept sparsity, and the accuracy change (points, vs the original on the test split) of every shipped
  artifact: float32 ONNX, the best int8, the MC model (written or not);
- in a fresh plain Keras 3 process: ``keras.saving.load_model`` opens ``model.keras`` and ``original.keras``;
  ``original.keras`` computes what the user's file computes (max |difference|, target <= 1e-5) and the
  float32 ONNX computes what ``model.keras`` computes (target <= 1e-4).

Models: ``cnn`` (Rescaling, Conv2D + BN + ReLU, MaxPooling, Conv2D + BN + ReLU, MaxPooling, Flatten,
Dropout, Dense(64) ReLU, Dropout, Dense softmax) and ``residual`` (functional: a conv stem and a residual block whose
Add joins the skip, SpatialDropout2D, GlobalAveragePooling, Dropout, Dense softmax), on the Fashion sample; with
``--all``, also ``logits`` (the chapter's MLP ending in Dense(10) logits) and ``regression`` (an MLP with
Dropout on scikit-learn's diabetes data, reported by RMSE and interval coverage). Several inputs and outputs
(issue 20): ``wide_deep`` (the book's chapter 10 Wide & Deep network with its auxiliary output, line for line, on
the diabetes data: wide = features 0-4, deep = features 2-7) and ``three_heads`` (a regressor with three named
heads on generated data), each with an .npz named after the model's inputs and outputs; their ONNX check
feeds every named input and compares every named output. Binary heads and labels as users store them (issue 20):
``sigmoid`` (the tutorial's tabular binary classifier: Normalization, Dense(16) ReLU, Dense(1, sigmoid),
binary_crossentropy, on scikit-learn's breast_cancer) and ``onehot`` (an MLP trained with categorical_crossentropy
on the Fashion sample's one-hot labels, given to deploykit one-hot). A run of some models keeps the other
models' rows of the last results (same epochs).
Sequence models and the chapter's MC Dropout (issue 20): ``lstm`` (the Keras text
classifier: Embedding, LSTM, Dropout, Dense softmax, on generated token sequences) and ``mc_dropout`` (the
chapter's MLP with its own ``class MCDropout(keras.layers.Dropout)`` forcing ``training=True``, registered with
``keras.saving.register_keras_serializable``, on the Fashion sample; the Keras 3 check reads that class in
inference mode, as deploykit does, to compare deterministic outputs).

Writes ``benchmarks/results/models.json`` and ``models.md``. Run from the repository root:

    python benchmarks/bench_models.py [--models cnn,residual] [--epochs 8] [--results models]
    python benchmarks/bench_models.py --models wide_deep,three_heads --results models_multi_io
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import FASHION, ROOT, write_results  # noqa: E402  (puts the repository on sys.path)

MODELS = (
    "cnn",
    "residual",
    "logits",
    "regression",
    "wide_deep",
    "three_heads",
    "sigmoid",
    "onehot",
    "lstm",
    "mc_dropout",
)
#: The cases with several inputs or outputs: data named after the model's tensors (no Fashion sample needed).
MULTI = ("wide_deep", "three_heads")
#: The models trained on the Fashion sample (the others bring scikit-learn or generated data).
ON_FASHION = ("cnn", "residual", "logits", "onehot", "mc_dropout")
#: Extra optimize runs of a trained model, beside the defaults: on the 2.5k-image sample the default 30
#: fine-tuning epochs overfit a CNN (prune 50%: -0.74 pt after 5 epochs, -1.84 pt after 30, plain).
VARIANTS = {"cnn": (("--epochs", "5"),), "residual": (("--epochs", "5"),)}

#: Built and trained in a plain Keras 3 process: argv = kind, data (.npz), epochs, out path.
TRAIN = textwrap.dedent("""
    import sys, numpy as np, keras
    kind, data, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    @keras.saving.register_keras_serializable()
    class MCDropout(keras.layers.Dropout):  # chapter 11, as the book writes it
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    keras.utils.set_random_seed(0)
    L = keras.layers
    z = np.load(data)
    x, y = (z["x"].astype("float32"), z["y"]) if "x" in z else (None, None)
    if kind == "wide_deep":  # the book's chapter 10, line for line (its California housing: diabetes here)
        input_wide = keras.layers.Input(shape=[5], name="input_wide")
        input_deep = keras.layers.Input(shape=[6], name="input_deep")
        norm_layer_wide = keras.layers.Normalization()
        norm_layer_deep = keras.layers.Normalization()
        norm_wide = norm_layer_wide(input_wide)
        norm_deep = norm_layer_deep(input_deep)
        hidden1 = keras.layers.Dense(30, activation="relu")(norm_deep)
        hidden2 = keras.layers.Dense(30, activation="relu")(hidden1)
        concat = keras.layers.concatenate([norm_wide, hidden2])
        output = keras.layers.Dense(1, name="output")(concat)
        aux_output = keras.layers.Dense(1, name="aux_output")(hidden2)
        model = keras.Model(inputs=[input_wide, input_deep], outputs=[output, aux_output])
        norm_layer_wide.adapt(z["input_wide"])
        norm_layer_deep.adapt(z["input_deep"])
        model.compile(loss=("mse", "mse"), loss_weights=(0.9, 0.1), optimizer=keras.optimizers.Adam(learning_rate=1e-3))
        model.fit((z["input_wide"], z["input_deep"]), (z["y"], z["y"]), epochs=epochs, verbose=0, validation_split=0.15,
                  callbacks=[keras.callbacks.EarlyStopping(patience=4, restore_best_weights=True)])
        model.save(out)
        raise SystemExit(0)
    if kind == "three_heads":
        inputs = keras.Input(shape=(8,), name="features")
        norm = L.Normalization()
        norm.adapt(z["features"])
        h = L.Dense(64, activation="relu")(norm(inputs))
        h = L.Dense(64, activation="relu")(L.Dropout(0.1)(h))
        heads = [L.Dense(z[n].shape[1], name=n)(h) for n in ("price", "rooms", "age")]
        model = keras.Model(inputs, heads)
        model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="mse")
        model.fit(z["features"], [z[n] for n in ("price", "rooms", "age")], epochs=epochs, batch_size=32, verbose=0,
                  validation_split=0.15,
                  callbacks=[keras.callbacks.EarlyStopping(patience=4, restore_best_weights=True)])
        model.save(out)
        raise SystemExit(0)
    if kind == "cnn":  # chapter 14's shape, small: two conv blocks, then a dense head
        inputs = keras.Input(x.shape[1:])
        h = L.Reshape((*x.shape[1:], 1))(inputs)
        h = L.Rescaling(1 / 255)(h)
        h = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same", use_bias=False)(h)))
        h = L.MaxPooling2D()(h)
        h = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 3, use_bias=False)(h)))
        h = L.MaxPooling2D()(h)
        h = L.Dropout(0.3)(L.Flatten()(h))
        h = L.Dropout(0.3)(L.Dense(64, activation="relu")(h))
        outputs = L.Dense(10, activation="softmax")(h)
        model, loss = keras.Model(inputs, outputs, name="cnn"), "sparse_categorical_crossentropy"
    elif kind == "residual":
        inputs = keras.Input(x.shape[1:])
        h = L.Rescaling(1 / 255)(L.Reshape((*x.shape[1:], 1))(inputs))
        a = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(h)))
        b = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same", use_bias=False)(a)))
        b = L.BatchNormalization()(L.Conv2D(32, 3, padding="same", use_bias=False)(b))
        h = L.ReLU()(L.Add()([a, b]))
        h = L.SpatialDropout2D(0.1)(L.MaxPooling2D()(h))
        h = L.Dropout(0.3)(L.GlobalAveragePooling2D()(h))
        outputs = L.Dense(10, activation="softmax")(h)
        model, loss = keras.Model(inputs, outputs, name="residual"), "sparse_categorical_crossentropy"
    elif kind == "logits":
        norm = L.Normalization()
        norm.adapt(x.reshape(len(x), -1))
        model = keras.Sequential([keras.Input(x.shape[1:]), L.Flatten(), norm, L.Dense(300, activation="elu"),
                                  L.Dropout(0.2), L.Dense(100, activation="elu"), L.Dropout(0.2), L.Dense(10)])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    elif kind == "sigmoid":  # the tutorial's tabular binary classifier: one sigmoid unit, binary_crossentropy
        model = keras.Sequential([keras.Input((30,)), L.Normalization(), L.Dense(16, activation="relu"),
                                  L.Dense(1, activation="sigmoid")])
        model.layers[0].adapt(x)
        loss = "binary_crossentropy"
    elif kind == "onehot":  # one-hot labels, as Keras examples train with: categorical_crossentropy
        model = keras.Sequential([keras.Input(x.shape[1:]), L.Flatten(), L.Rescaling(1 / 255),
                                  L.Dense(128, activation="relu"), L.Dropout(0.2), L.Dense(10, activation="softmax")])
        loss = "categorical_crossentropy"
    elif kind == "lstm":  # the Keras text-classification shape
        x = x.astype("int32")
        model = keras.Sequential([keras.Input(x.shape[1:], dtype="int32"), L.Embedding(int(x.max()) + 1, 16),
                                  L.LSTM(32), L.Dropout(0.2), L.Dense(int(y.max()) + 1, activation="softmax")])
        loss = "sparse_categorical_crossentropy"
    elif kind == "mc_dropout":
        model = keras.Sequential([keras.Input(x.shape[1:]), L.Flatten(), L.Rescaling(1 / 255),
                                  L.Dense(100, activation="relu"), MCDropout(0.2), L.Dense(10, activation="softmax")])
        loss = "sparse_categorical_crossentropy"
    else:  # regression
        norm = L.Normalization()
        norm.adapt(x)
        y = y.astype("float32")
        model = keras.Sequential([keras.Input(x.shape[1:]), norm, L.Dense(64, activation="relu"), L.Dropout(0.2),
                                  L.Dense(64, activation="relu"), L.Dropout(0.2), L.Dense(1)])
        loss = "mse"
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, validation_split=0.15,
              callbacks=[keras.callbacks.EarlyStopping(patience=4, restore_best_weights=True)])
    model.save(out)
""")

#: In a fresh plain Keras 3 process: argv = user's model, out folder, probe inputs (.npy). Prints JSON.
CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, keras, onnxruntime as ort, onnx
    user, out, probe = sys.argv[1], Path(sys.argv[2]), np.load(sys.argv[3])
    if sys.argv[3].endswith(".npz"):  # several inputs: arrays named after them
        probe = dict(probe)
    def joined(outputs, names=None):  # several outputs: flattened side by side, in the order of their names
        if not isinstance(outputs, (list, tuple)):
            return np.asarray(outputs)
        order = sorted(range(len(outputs)), key=lambda i: names[i])
        return np.concatenate([np.asarray(outputs[i]).reshape(len(outputs[i]), -1) for i in order], axis=1)

    @keras.saving.register_keras_serializable()
    class MCDropout(keras.layers.Dropout):  # the chapter's class read in inference mode, as deploykit reads it
        pass

    result = {}
    ref = keras.saving.load_model(user)
    if isinstance(probe, dict):  # the model's inputs, in its order (the .npz also holds the targets)
        probe = [probe[t.name] for t in ref.inputs] if len(ref.inputs) > 1 else probe[ref.inputs[0].name]
        probe_named = {t.name: a for t, a in zip(ref.inputs, probe if isinstance(probe, list) else [probe])}
    else:
        probe_named = None
    for name in ("original.keras", "model.keras"):
        try:
            result[name] = keras.saving.load_model(out / name)
        except Exception as exc:  # what a user would meet
            result[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
    loaded = {k: v for k, v in result.items() if not k.endswith("_error")}
    report = {k: v for k, v in result.items() if k.endswith("_error")}
    if "original.keras" in loaded:
        a, b = (joined(m.predict(probe, verbose=0), getattr(m, "output_names", None))  # none on a Sequential
                for m in (loaded["original.keras"], ref))
        report["original_vs_user"] = float(np.abs(a - b).max())
    onnx_path = out / "model.onnx"
    if onnx_path.exists():
        proto = onnx.load(onnx_path)
        report["onnx_bn_nodes"] = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
        if "model.keras" in loaded:
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            out0 = session.get_outputs()[0].name  # `logits` (the model's own), `probabilities` or `prediction`
            names = [i.name for i in session.get_inputs()]
            feed = {n: probe_named[n] for n in names} if probe_named and len(names) > 1 else \
                {names[0]: probe if not isinstance(probe, list) else probe[0]}
            outs = [o.name for o in session.get_outputs()]
            several = probe_named is not None and len(outs) > 1
            got = np.concatenate([v.reshape(len(v), -1) for v in session.run(outs, feed)], axis=1) if several \
                else session.run([out0], feed)[0]
            kept = loaded["model.keras"]
            want = joined(kept.predict(probe, verbose=0), getattr(kept, "output_names", None))
            if got.shape[1] == 2 and want.shape[1] == 1:  # a binary head: P(class 1) is served as [1 - p, p]
                want = np.concatenate([1 - want, want], axis=1)
            meta = {p.key: p.value for p in proto.metadata_props}
            temperature = json.loads(meta.get("deploykit.temperature", "null") or "null")
            if temperature and out0 == "probabilities":  # the stored Div before the softmax
                logits = np.log(np.clip(want, 1e-30, None)) / temperature["temperature"]
                want = np.exp(logits - logits.max(1, keepdims=True)); want /= want.sum(1, keepdims=True)
            report["onnx_vs_model_keras"] = float(np.abs(got - want).max()) / max(
                1.0, float(np.sqrt(np.mean(want.astype("float64") ** 2))))
        report["model_keras_bn_layers"] = (
            sum(type(l).__name__ == "BatchNormalization" for l in loaded.get("model.keras", ref).layers)
            if "model.keras" in loaded else None)
    report["user_bn_layers"] = sum(type(l).__name__ == "BatchNormalization" for l in ref.layers)
    print(json.dumps(report))
""")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, **kw)


def plain_keras3(script: str, *argv: str) -> subprocess.CompletedProcess:
    """A plain Keras 3 process: TF_USE_LEGACY_KERAS unset, deploykit not imported."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return run([sys.executable, "-c", script, *argv], env=env)


def legacy_keras(script: str, *argv: str) -> subprocess.CompletedProcess:
    """A tf.keras (Keras 2) process, as TensorFlow <= 2.15 runs its users' code: TF_USE_LEGACY_KERAS=1 makes
    ``tf.keras`` tf_keras; deploykit not imported."""
    import os

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return run([sys.executable, "-c", script, *argv], env=env)


def breast_cancer_npz(folder: Path) -> Path:
    """scikit-learn's breast_cancer (569 rows, 30 features, 0/1 labels): a binary classification as users save it."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    path = folder / "breast_cancer.npz"
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def one_hot_npz(folder: Path) -> Path:
    """The Fashion sample with its labels one-hot ([N, 10] of 0/1), as Keras examples store them."""
    import numpy as np

    with np.load(FASHION) as z:
        x, y = z["x"], z["y"]
    path = folder / "fashion_onehot.npz"
    np.savez(path, x=x, y=np.eye(10, dtype=np.float32)[y])
    return path


def data_for(kind: str, folder: Path) -> Path:
    makers = {"regression": regression_npz, "sigmoid": breast_cancer_npz, "onehot": one_hot_npz, "lstm": tokens_npz}
    return makers[kind](folder) if kind in makers else FASHION


def regression_npz(folder: Path) -> Path:
    """scikit-learn's diabetes data (442 rows, 10 features, a continuous target) as x / y float32."""
    import numpy as np
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    path = folder / "diabetes.npz"
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.float32))
    return path


def tokens_npz(folder: Path) -> Path:
    """1,500 generated token sequences (30 steps, ids < 300); the class: the third of the ids the first five average."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(1, 300, (1500, 30))
    y = (x[:, :5].mean(axis=1) * 3 // 300).astype(np.int64)
    path = folder / "tokens.npz"
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def optimize(model: Path, data: Path, out: Path, extra: tuple[str, ...] = ()) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = run(
        [
            sys.executable,
            "-m",
            "deploykit.cli.main",
            "optimize",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            *extra,
        ]
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {
        "exit": done.returncode,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
        "error": (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else "",
    }
    report = out / "report.json"
    if report.exists():
        row.update(summary(json.loads(report.read_text())))
    return row


def summary(report: dict) -> dict:
    """What the targets need from report.json: kept sparsity, shipped / rejected files, their changes."""
    arts = [r for r in report["artifacts"] if r["file"] != "original.keras"]
    kept = next((t for t in report["tries"] if t["stage"] == "sparsity" and t["kept"]), None)
    regression = report["original"].get("accuracy") is None
    # points of accuracy, or (a regressor) percent of RMSE: both "how much worse" in the budget's own terms
    change = {r["file"]: (r.get("rmse_change") if regression else r.get("accuracy_change")) for r in arts}
    return {
        "kept_sparsity": kept["setting"] if kept else "dense",
        "unit": "% RMSE" if regression else "pt",
        "shipped": [r["file"] for r in arts if r["verdict"] != "rejected"],
        "rejected": [r["file"] for r in arts if r["verdict"] == "rejected"],
        "changes_points": {k: (None if v is None else round(100 * v, 2)) for k, v in change.items()},
        # issue 22: each row's test NLL change vs the original (a fraction) and, for an exported file, vs model.keras
        "nll_changes": {r["file"]: r.get("nll_change") for r in arts if r.get("nll_change") is not None},
        "nll_export_changes": {
            r["file"]: r.get("nll_export_change") for r in arts if r.get("nll_export_change") is not None
        },
        "original": {k: v for k, v in report["original"].items() if isinstance(v, (int, float, str))},
        # the sparsity search's tries: what each missed (accuracy or, issue 22, NLL) is in its note
        "sparsity_tries": [
            {k: t.get(k) for k in ("setting", "accuracy_change", "nll_change", "kept", "note")}
            for t in report["tries"]
            if t["stage"] == "sparsity"
        ],
    }


def multi_npz(kind: str, folder: Path) -> Path:
    """Data named after the model's inputs and outputs: the book's Wide & Deep on diabetes, or three heads."""
    import numpy as np
    from sklearn.datasets import load_diabetes

    path = folder / f"{kind}.npz"
    if kind == "wide_deep":
        x, y = load_diabetes(return_X_y=True)
        np.savez(
            path,
            input_wide=x[:, :5].astype(np.float32),
            input_deep=x[:, 2:8].astype(np.float32),
            y=(y / 100).astype(np.float32),
        )  # `y`: both heads' targets, as the book trains its aux output
        return path
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    base = x @ rng.normal(size=(8, 4))
    heads = {
        "price": 3.0 + base[:, :1],
        "rooms": 5.0 + 0.5 * base[:, 1:3] + 0.3 * x[:, :1] ** 2,
        "age": 30.0 + 10.0 * np.tanh(base[:, 3:4]),
    }
    np.savez(
        path,
        features=x,
        **{k: (v + rng.normal(scale=0.05 * v.std(), size=v.shape)).astype(np.float32) for k, v in heads.items()},
    )
    return path


def probe_inputs(data: Path, folder: Path) -> Path:
    import numpy as np

    arrays = np.load(data)
    if "x" not in arrays:  # several inputs: every array of 2000 rows or fewer, cut to 256
        path = folder / "probe.npz"
        np.savez(path, **{k: arrays[k][:256].astype(np.float32) for k in arrays.files})
        return path
    x = arrays["x"][:256].astype(np.float32)
    path = folder / "probe.npy"
    np.save(path, x)
    return path


def one(kind: str, folder: Path, epochs: int, given: tuple[str, ...] = ()) -> list[dict]:
    """The model trained once, then optimize with defaults (and each of its VARIANTS), each checked in Keras 3."""
    data = multi_npz(kind, folder) if kind in MULTI else data_for(kind, folder)
    model = folder / f"{kind}.keras"
    say(f"{kind}: training in Keras 3 ({epochs} epochs at most)")
    done = plain_keras3(TRAIN, kind, str(data), str(epochs), str(model))
    if done.returncode:
        return [
            {"model": kind, "exit": None, "error": "training failed: " + (done.stderr.strip().splitlines() or [""])[-1]}
        ]
    rows = []
    for k, extra in enumerate(((), *VARIANTS.get(kind, ()))):
        name, out = " ".join((kind, *extra, *given)), folder / f"out_{kind}_{k}"
        say(f"{name}: deploykit optimize")
        row = {"model": name, **optimize(model, data, out, (*extra, *given))}
        done = plain_keras3(CHECK, str(model), str(out), str(probe_inputs(data, folder)))
        row["keras3_check"] = (
            json.loads(done.stdout.strip().splitlines()[-1])
            if done.returncode == 0
            else {"error": (done.stderr.strip().splitlines() or [""])[-1]}
        )
        say(f"{name}: exit {row['exit']} in {row['wall_seconds']} s")
        rows.append(row)
    return rows


def markdown(rows: list[dict], epochs: int) -> str:
    lines = [
        "# Models users bring: Keras 3 files through `deploykit optimize` (defaults)",
        "",
        f"Trained in plain Keras 3 (at most {epochs} epochs, early stopping), saved as `.keras`, then "
        "`deploykit optimize MODEL --data DATA` in its own process. Changes are vs the original on the test "
        "split: accuracy points (pt), or for the regressor the RMSE change in percent (positive is worse). "
        "Keras 3 checks run in a fresh plain Keras 3 process.",
        "",
        "| model | exit | wall / CPU s | BN layers in → in model.keras | BN nodes in model.onnx | kept sparsity "
        "| model.onnx Δ | int8 Δ (best shipped) | MC model | shipped / rejected | Keras 3 opens out files "
        "| original vs user | ONNX vs model.keras |",
        "|---|---:|---:|---|---:|---|---:|---:|---|---|---|---:|---:|",
    ]
    for r in rows:
        c = r.get("keras3_check", {})
        ch = r.get("changes_points", {})
        unit = r.get("unit", "pt")
        int8 = [v for k, v in ch.items() if "int8" in k and k in r.get("shipped", []) and v is not None]
        best = (min(int8) if unit != "pt" else max(int8)) if int8 else None
        opens = "yes" if c and not any(k.endswith("_error") for k in c) and "error" not in c else f"no: {c}"
        lines.append(
            f"| {r['model']} | {r.get('exit')} | {r.get('wall_seconds', '')} / {r.get('cpu_seconds', '')} "
            f"| {c.get('user_bn_layers', '?')} → {c.get('model_keras_bn_layers', '?')} | {c.get('onnx_bn_nodes', '?')} "
            f"| {r.get('kept_sparsity', '?')} | {ch.get('model.onnx', '?')} {unit} | {'—' if best is None else best} "
            f"{unit} "
            f"| {'written' if 'model_mc.onnx' in r.get('shipped', []) else 'no'} "
            f"| {len(r.get('shipped', []))} / {len(r.get('rejected', []))} | {opens} "
            f"| {c.get('original_vs_user', float('nan')):.1e} | {c.get('onnx_vs_model_keras', float('nan')):.1e} |"
        )
        if r.get("error"):
            lines.append(f"|  | error: {r['error'][:150]} |" + " |" * 11)
    lines += nll_markdown(rows)
    lines += [
        "",
        "ONNX vs model.keras: the largest |difference| of `model.onnx`'s first output (`probabilities`, `logits` or "
        "`prediction`; with several outputs, every output side by side in name order) from `model.keras`'s, divided by "
        "the outputs' RMS when above 1 (float32 rounds relative to "
        "the values); `probabilities` are compared with the stored temperature applied.",
    ]
    return "\n".join(lines) + "\n"


def nll_markdown(rows: list[dict]) -> list[str]:
    """Issue 22's NLL table: every shipped artifact's test NLL vs the user's model (target: at most +2%)."""
    measured = [r for r in rows if r.get("nll_changes")]
    if not measured:
        return []
    lines = [
        "",
        "## Test NLL of every shipped artifact vs the user's model (issue 22: at most +2%)",
        "",
        "From report.json: `nll_change` (vs the original, test split) of each shipped file; in brackets the exported "
        "file's change vs `model.keras` (`nll_export_change`, what `max_nll_increase` holds). Rejected files are "
        "not listed.",
        "",
        "| model | worst shipped | files (NLL vs original [vs model.keras]) |",
        "|---|---:|---|",
    ]
    for r in measured:
        shipped = {k: v for k, v in r["nll_changes"].items() if k in r.get("shipped", []) and k != "model_mc.onnx"}
        worst = max(shipped.values(), default=None)
        cells = ", ".join(
            f"{k} {100 * v:+.1f}%"
            + (f" [{100 * r['nll_export_changes'][k]:+.1f}%]" if k in r.get("nll_export_changes", {}) else "")
            for k, v in shipped.items()
        )
        lines.append(f"| {r['model']} | {'—' if worst is None else f'{100 * worst:+.1f}%'} | {cells} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,residual", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--all", action="store_true", help="every model")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument(
        "--optimize-args",
        default="",
        help="extra options of every optimize (e.g. '--no-sparsity --no-mc': the exports and their NLL, quickly)",
    )
    ap.add_argument("--results", default="models", help="results file name in benchmarks/results (default: models)")
    args = ap.parse_args()
    kinds = MODELS if args.all else tuple(k for k in args.models.split(",") if k)
    if not FASHION.exists() and any(k in ON_FASHION for k in kinds):
        sys.exit(f"the Fashion sample is absent ({FASHION.name} beside the project): nothing to measure")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for kind in kinds for row in one(kind, Path(tmp), args.epochs, tuple(args.optimize_args.split()))]
    rows = kept_rows(args.results, kinds, args.epochs) + rows
    write_results(args.results, {"epochs": args.epochs, "rows": rows}, markdown(rows, args.epochs))


def kept_rows(name: str, kinds: tuple[str, ...], epochs: int) -> list[dict]:
    """The last results' rows of the models not run now (a run of some models keeps the others' rows), same epochs."""
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    if not path.exists():
        return []
    last = json.loads(path.read_text())
    if last.get("epochs") != epochs:
        return []
    return [r for r in last.get("rows", []) if r["model"].split()[0] not in kinds]


if __name__ == "__main__":
    main()
