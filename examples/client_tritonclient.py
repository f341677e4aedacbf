"""Ask a `deploykit serve` (or Triton / KServe) server for a class and its uncertainty.

Uses Triton's own Python client over the Open Inference Protocol (KServe v2),
with binary tensors. The input's name and shape come from the model's metadata,
so the same client works for any deploykit model. Start a server first, e.g.::

    deploykit mc --out runs/mc && deploykit serve runs/mc
    python examples/client_tritonclient.py --model model_mc --samples 100 --npz data.npz --index 3

``--npz`` sends a real sample (arrays ``x_test``/``y_test`` or ``x``/``y``, as
deploykit reads them); without it a synthetic input of the right shape is sent.
Needs ``pip install "tritonclient[http]"``.
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient


def sample(npz: str | None, index: int, shape: list[int]) -> tuple[np.ndarray, object]:
    """One row of the model's input shape (batch of 1) and its true label (None when synthetic)."""
    if npz is None:
        return np.random.default_rng(index).uniform(0, 1, [1, *shape]).astype(np.float32), None
    with np.load(npz, allow_pickle=False) as data:
        xkey, ykey = ("x_test", "y_test") if "x_test" in data.files else ("x", "y")
        x, y = data[xkey][index], data[ykey][index] if ykey in data.files else None
    if x.size != int(np.prod(shape)):
        raise SystemExit(f"{npz}: {xkey}[{index}] has {x.size} values, the model takes {shape}")
    return x.reshape([1, *shape]).astype(np.float32), y


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
    (spec,) = meta["inputs"]  # deploykit models take one FP32 input of shape [-1, ...]
    x, label = sample(args.npz, args.index, spec["shape"][1:])
    labels = meta.get("parameters", {}).get("class_labels") or []
    outputs = [o["name"] for o in meta["outputs"]]

    tensor = httpclient.InferInput(spec["name"], list(x.shape), spec["datatype"])
    tensor.set_data_from_numpy(x)  # binary tensor data (the default)
    parameters = {"samples": args.samples} if args.samples else None  # a deterministic model ignores it
    result = client.infer(args.model, [tensor], parameters=parameters)

    def name(k: int) -> str:
        return f"{k} ({labels[k]})" if k < len(labels) else str(k)

    print(f"sample {args.index}: " + (f"true class {name(int(label))}" if label is not None else "synthetic input"))
    if "mean" in outputs:  # an MC Dropout model
        mean = result.as_numpy("mean")[0]
        predicted = int(result.as_numpy("predicted_class")[0])
        samples = result.get_response().get("parameters", {}).get("samples")
        print(f"predicted class {name(predicted)}, mean probability {mean[predicted]:.3f} "
              f"(std {result.as_numpy('std')[0][predicted]:.3f}, {samples} samples)")
        print(f"predictive entropy {result.as_numpy('predictive_entropy')[0]:.3f} nats, "
              f"mutual information {result.as_numpy('mutual_information')[0]:.3f} nats")
    else:  # a deterministic model
        probabilities = result.as_numpy(outputs[0])[0]
        predicted = int(probabilities.argmax())
        entropy = float(-(probabilities * np.log(np.maximum(probabilities, 1e-12))).sum())
        print(f"predicted class {name(predicted)}, probability {probabilities[predicted]:.3f}, entropy {entropy:.3f} nats")


if __name__ == "__main__":
    main()
