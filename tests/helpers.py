"""Model builders shared by the tests (import: ``from tests.helpers import build_dense``)."""

from __future__ import annotations

import numpy as np


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNormalization non-trivial statistics (not the 0/1 defaults)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            shape = layer.moving_mean.shape
            values = {
                "gamma": rng.uniform(0.5, 1.5, shape).astype("float32"),
                "beta": rng.normal(0, 0.5, shape).astype("float32"),
                "moving_mean": rng.normal(0, 1.0, shape).astype("float32"),
                "moving_variance": rng.uniform(0.2, 3.0, shape).astype("float32"),
            }
            # by weight name, so center=False / scale=False layers work too
            layer.set_weights([values[w.name.split("/")[-1].split(":")[0]] for w in layer.weights])


def build_dense(input_dim=64, hidden=(32, 32), classes=10, *, bn=True, dropout=0.2, selu=False, data=None):
    """A small chapter-style dense net in tf_keras (Normalization first when data is given)."""
    from deploykit.backend import keras

    layers = [keras.Input(shape=(input_dim,))]
    if data is not None:
        from deploykit.training.model import standardization

        mean, var = standardization(data)
        layers.append(keras.layers.Normalization(mean=mean, variance=var))
    for width in hidden:
        if selu:
            layers.append(keras.layers.Dense(width, activation="selu", kernel_initializer="lecun_normal"))
            if dropout:
                layers.append(keras.layers.AlphaDropout(dropout))
        else:
            layers.append(keras.layers.Dense(width, activation="elu", kernel_initializer="he_normal"))
            if bn:
                layers.append(keras.layers.BatchNormalization())
            if dropout:
                layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(classes, activation="softmax"))
    return keras.Sequential(layers)


def build_head(input_dim=64, hidden=(16,), outputs=10, *, dropout=0.0, seed=0):
    """A small dense net ending in a linear Dense: a logits classifier (outputs >= 2) or a regressor, in tf_keras."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    layers = [keras.Input(shape=(input_dim,))]
    for width in hidden:
        layers.append(keras.layers.Dense(width, activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(outputs))
    return keras.Sequential(layers)


def regression_arrays(n=300, features=8, targets=1, seed=0):
    """(x, y): float targets a small net can fit (a linear map plus a square, plus noise); y is [n] for one target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=(features, targets))
    y = 50 + 20 * (x @ w) + 5 * x[:, :1] ** 2 + rng.normal(scale=2.0, size=(n, targets))
    return x, (y[:, 0] if targets == 1 else y).astype(np.float32)


def ships_by_budget(row: dict, report: dict) -> bool:
    """Whether the budget rule (written independently of :mod:`deploykit.pipeline.confirm`) ships a report.json
    artifact row: validation accepts it, and the test split confirms it by its point estimate, or, when the test
    split is too small to resolve the budget, by its 95% interval not lying entirely beyond it."""
    budget = report["budget"]
    limit = budget["max_accuracy_drop"]
    validation = row.get("validation")
    if validation is not None and not validation["within"]:
        return False
    if not nll_within(row, budget):
        return False
    if -row["accuracy_change"] <= limit + 1e-12:
        return True
    resolves = budget.get("resolution", {}).get("test", {}).get("resolves_budget", True)
    return not resolves and -row["ci95"][1] <= limit + 1e-12


def nll_within(row: dict, budget: dict) -> bool:
    """The NLL budget of a classifier's file (written independently of :mod:`deploykit.pipeline.nll`): its NLL at
    most ``max_nll_increase`` above the user's model's by the point estimate on validation, and on test where its
    interval resolves that limit (else not entirely beyond it); and an
    exported file's validation NLL at most that above its source model's, and on test not an increase over its
    source whose 95% interval lies entirely beyond it."""
    limit = budget.get("max_nll_increase")
    if limit is None:
        return True
    validation = row.get("validation") or {}
    if (validation.get("nll_change") or 0.0) > limit + 1e-12:
        return False
    total = row.get("nll_ci95")  # on test: the point estimate where the interval resolves the limit, else its low end
    unresolved = total is not None and (total[1] - total[0]) / 2 > limit + 1e-12
    if (row.get("nll_change") or 0.0) > limit + 1e-12 and not (unresolved and total[0] <= limit + 1e-12):
        return False
    if (validation.get("nll_export_change") or 0.0) > limit + 1e-12:
        return False
    ci = row.get("nll_export_ci95")
    return ci is None or ci[0] <= limit + 1e-12 or (row.get("nll_export_change") or 0.0) <= limit + 1e-12


def structured_search_run(digits, tmp_path, hidden: tuple[int, ...], fit_epochs: int, structured, epochs: int):
    """``optimize`` with only the structured step searching, on a Keras 3 MLP built and saved as users do
    (``model.save``), a 3-point budget: (result, the structured step's record, its tries in order)."""
    import keras

    from deploykit.pipeline import OptimizeConfig, optimize
    from deploykit.pipeline.records import Stage
    from deploykit.pipeline.tables import ValidateStep

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(units, activation="relu") for units in hidden]
    model = keras.Sequential([keras.Input((64,)), *layers, keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x_train / 16, digits.y_train, epochs=fit_epochs, verbose=0)
    model.save(tmp_path / "mlp.keras")
    config = OptimizeConfig(validate=ValidateStep(latency_repeats=3, max_accuracy_drop=0.03), structured=structured)
    result = optimize(
        str(tmp_path / "mlp.keras"),
        digits,
        config=config,
        out_dir=tmp_path / "out",
        sparsity="none",
        epochs=epochs,
        formats="onnx",
        quantize="float32",
        mc=False,
    )
    step = next(s for s in result.steps if s.step == "structured")
    tries = [t for t in result.tries if t.stage is Stage.SPARSITY and t.setting.startswith("structured")]
    return result, step, tries


def breast_cancer_npz(tmp_path, rows: int | None = None):
    """sklearn's breast_cancer (30 raw features on scales 0.001 to 4,000, 0/1 labels) as users save it: x and y in
    an .npz; ``rows``: a random subset of that many. Returns (path, x, y)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    if rows is not None:
        keep = np.sort(np.random.default_rng(0).choice(len(x), rows, replace=False))
        x, y = x[keep], y[keep]
    path = tmp_path / "bc.npz"
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))
    return path, x.astype(np.float32), y.astype(np.int64)


def keras3_tabular_model(x, y, path, *, hidden=(16,), softmax: bool = False, epochs: int = 30):
    """The Keras tutorial's tabular classifier, exactly as users build it in Keras 3: a Normalization adapted on the
    raw features ``x``, Dense ReLU layers, one sigmoid unit (``softmax``: two softmax units), trained briefly on
    ``(x, y)`` and saved as .keras at ``path``."""
    import keras

    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    layers = [keras.layers.Dense(n, activation="relu") for n in hidden]  # made in this order: the seeds follow it
    layers.append(
        keras.layers.Dense(2, activation="softmax") if softmax else keras.layers.Dense(1, activation="sigmoid")
    )
    model = keras.Sequential([keras.Input(x.shape[1:]), norm, *layers])
    loss = "sparse_categorical_crossentropy" if softmax else "binary_crossentropy"
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return model


def export_every_onnx_variant(cli, source, data, out) -> dict:
    """``deploykit export SOURCE.onnx`` to float16, int8-dynamic and int8-static with ``data`` into ``out``: asserts
    it shipped and returns its validation.json."""
    import json
    from pathlib import Path

    result = cli(
        "export", source, "--quantize", "float16,int8-dynamic,int8-static", "--data", data, "--out", out,
        "--repeats", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads((Path(out) / "validation.json").read_text())
