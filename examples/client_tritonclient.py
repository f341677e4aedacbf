"""Ask a `deploykit serve` (or Triton / KServe) server for a class (or values) and its uncertainty.

Uses Triton's own Python client over the Open Inference Protocol (KServe v2),
with binary tensors. The input's name and shape, and what the model predicts
(``task``, ``kind`` and ``output`` in ``/v2/models/NAME``'s parameters) come from
the model's metadata, so the same client works for any deploykit model: a softmax,
logits or binary classifier, a regressor, an MC Dropout model or a deep ensemble. Start a server first, e.g.::

    deploykit mc --out runs/mc && deploykit serve runs/mc
    python examples/client_tritonclient.py --model model_mc --samples 100 --npz data.npz --index 3

``--npz`` sends a real sample (arrays ``x_test``/``y_test`` or ``x``/``y``, as
deploykit reads them; a model with several inputs takes arrays named after them, e.g.
``input_wide`` and ``input_deep``); without it a synthetic input of the right shape is sent.
Needs ``pip install "tritonclient[http]"``.
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient


def sample(npz: str | None, index: int, shape: list[int], name: str | None = None) -> tuple[np.ndarray, object]:
    """One row of the model's input shape (batch of 1) and its true label (None when synthetic or unnamed).

    ``name``: the input's name, for a model with several inputs (the .npz holds one array per input)."""
    if npz is None:
        return np.random.default_rng(index).uniform(0, 1, [1, *shape]).astype(np.float32), None
    with np.load(npz, allow_pickle=False) as data:
        if name is not None:
            xkey, ykey = (f"{name}_test" if f"{name}_test" in data.files else name), None
        else:
            xkey, ykey = ("x_test", "y_test") if "x_test" in data.files else ("x", "y")
        if xkey not in data.files:
            raise SystemExit(f"{npz}: no array {xkey!r} for the model's input (it has {', '.join(data.files)})")
        x, y = data[xkey][index], data[ykey][index] if ykey in data.files else None
    if x.size != int(np.prod(shape)):
        raise SystemExit(f"{npz}: {xkey}[{index}] has {x.size} values, the model takes {shape}")
    return x.reshape([1, *shape]).astype(np.float32), y


def request(specs: list[dict], npz: str | None, index: int) -> tuple[list, object]:
    """One InferInput per model input (by name, binary tensor data) and the true label when the data has one."""
    several = len(specs) > 1
    tensors, label = [], None
    for spec in specs:
        x, y = sample(npz, index, spec["shape"][1:], spec["name"] if several else None)
        tensor = httpclient.InferInput(spec["name"], list(x.shape), spec["datatype"])
        tensor.set_data_from_numpy(x)  # binary tensor data (the default)
        tensors.append(tensor)
        label = y if y is not None else label
    return tensors, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8080", help="server host:port (default: 127.0.0.1:8080)")
    parser.add_argument("--model", default="model_mc", help="model name (default: model_mc)")
    parser.add_argument("--npz", default=None, help="an .npz with x_test/y_test (or x/y): send a real sample")
    parser.add_argument("--index", type=int, default=0, help="which sample to send (default: 0)")
    parser.add_argument("--samples", type=int, default=None, help="MC Dropout samples (default: the server's)")
    args = parser.parse_args()

    client = httpclient.InferenceServerClient(args.url)
    if not client.is_model_ready(args.model):
        raise SystemExit(f"model {args.model!r} is not ready on {args.url}")
    meta = client.get_model_metadata(args.model)
    tensors, label = request(meta["inputs"], args.npz, args.index)  # one FP32 tensor per input, by name
    labels = meta.get("parameters", {}).get("class_labels") or []
    outputs = [o["name"] for o in meta["outputs"]]
    samples = {"samples": args.samples} if args.samples else None  # a deterministic model ignores it
    result = client.infer(args.model, tensors, parameters=samples)

    def name(k: int) -> str:
        return f"{k} ({labels[k]})" if k < len(labels) else str(k)

    parameters = meta.get("parameters", {})
    kind, task = parameters.get("kind", "deterministic"), parameters.get("task", "classification")
    if label is None:
        print(f"sample {args.index}: synthetic input")
    else:
        truth = f"value {label}" if task == "regression" else f"class {name(int(label))}"
        print(f"sample {args.index}: true {truth}")
    if task == "regression":
        print_regression(result, outputs, kind)
    elif "mean" in outputs:  # an MC Dropout model or a deep ensemble
        print_uncertain_class(result, kind, name)
    else:  # a deterministic classifier: its probabilities (a logits or binary model's computed in the graph)
        print_class(result, parameters.get("output"), name)
    if "abstain" in outputs:
        print(
            "the model abstains: its uncertainty is above the threshold"
            if bool(result.as_numpy("abstain")[0])
            else "the model decides (uncertainty within the threshold)"
        )


def print_class(result, output: str | None, name) -> None:
    """Predicted class, its probability and the entropy; a binary model's P(class 1); a logits model's raw scores."""
    probabilities = result.as_numpy("probabilities")[0]
    predicted = int(probabilities.argmax())
    entropy = float(-(probabilities * np.log(np.maximum(probabilities, 1e-12))).sum())
    print(f"predicted class {name(predicted)}, probability {probabilities[predicted]:.3f}, entropy {entropy:.3f} nats")
    if output in ("sigmoid", "binary_logits"):
        print(f"binary classifier: P(class {name(1)}) = {probabilities[1]:.4f}")
    if output in ("logits", "binary_logits"):
        logits = result.as_numpy("logits")[0]
        print("logits (before the softmax / sigmoid): " + ", ".join(f"{v:.3f}" for v in logits))


def print_uncertain_class(result, kind: str, name) -> None:
    """An MC Dropout model's or a deep ensemble's mean probability, spread and uncertainty measures."""
    mean = result.as_numpy("mean")[0]
    predicted = int(result.as_numpy("predicted_class")[0])
    samples = result.get_response().get("parameters", {}).get("samples")
    over = f"{samples} samples" if kind == "mc_dropout" else "the ensemble's members"
    print(
        f"predicted class {name(predicted)}, mean probability {mean[predicted]:.3f} "
        f"(std {result.as_numpy('std')[0][predicted]:.3f}, {over})"
    )
    print(
        f"predictive entropy {result.as_numpy('predictive_entropy')[0]:.3f} nats, "
        f"mutual information {result.as_numpy('mutual_information')[0]:.3f} nats"
    )


def print_regression(result, outputs: list[str], kind: str) -> None:
    """A regressor's predictions in the targets' units; an MC / ensemble regressor's mean, std and 95% interval."""
    if "mean" not in outputs:  # one `prediction`, or several heads each named after the model's output
        named = ["prediction"] if "prediction" in outputs else outputs
        for name in named:
            values = ", ".join(f"{v:.4g}" for v in result.as_numpy(name)[0])
            print(("predicted " if name == "prediction" else f"{name}: predicted ") + values + " (the targets' units)")
        return
    mean, std = result.as_numpy("mean")[0], result.as_numpy("std")[0]
    parts = [
        f"target {k}: {m:.4g} +- {s:.3g} (95% interval {m - 1.96 * s:.4g} .. {m + 1.96 * s:.4g})"
        for k, (m, s) in enumerate(zip(mean, std))
    ]
    print(f"{kind}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
