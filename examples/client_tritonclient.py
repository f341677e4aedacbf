"""Ask a `deploykit serve` (or Triton / KServe) server for a digit's class and its uncertainty.

Uses Triton's own Python client over the Open Inference Protocol (KServe v2),
with binary tensors. Start a server first, e.g.::

    deploykit mc --out runs/mc && deploykit serve runs/mc
    python examples/client_tritonclient.py --model model_mc --samples 100

Needs ``pip install "tritonclient[http]" scikit-learn`` (the sample comes from
scikit-learn's digits data set: 8x8 images, 64 raw pixel values 0-16).
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8080", help="server host:port (default: 127.0.0.1:8080)")
    parser.add_argument("--model", default="model_mc", help="model name (default: model_mc)")
    parser.add_argument("--index", type=int, default=0, help="which digits sample to send (default: 0)")
    parser.add_argument("--samples", type=int, default=None, help="MC Dropout samples (default: the server's)")
    args = parser.parse_args()

    digits = load_digits()
    x = digits.data[args.index : args.index + 1].astype(np.float32)  # shape [1, 64]
    client = httpclient.InferenceServerClient(args.url)
    if not client.is_model_ready(args.model):
        raise SystemExit(f"model {args.model!r} is not ready on {args.url}")
    outputs = [o["name"] for o in client.get_model_metadata(args.model)["outputs"]]

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary tensor data (the default)
    parameters = {"samples": args.samples} if args.samples else None
    result = client.infer(args.model, [tensor], parameters=parameters)

    print(f"sample {args.index}: true class {digits.target[args.index]}")
    if "mean" in outputs:  # an MC Dropout model
        mean = result.as_numpy("mean")[0]
        predicted = int(result.as_numpy("predicted_class")[0])
        samples = result.get_response().get("parameters", {}).get("samples")
        print(f"predicted class {predicted}, mean probability {mean[predicted]:.3f} "
              f"(std {result.as_numpy('std')[0][predicted]:.3f}, {samples} samples)")
        print(f"predictive entropy {result.as_numpy('predictive_entropy')[0]:.3f} nats, "
              f"mutual information {result.as_numpy('mutual_information')[0]:.3f} nats")
    else:  # a deterministic model
        probabilities = result.as_numpy("probabilities")[0]
        predicted = int(probabilities.argmax())
        entropy = float(-(probabilities * np.log(np.maximum(probabilities, 1e-12))).sum())
        print(f"predicted class {predicted}, probability {probabilities[predicted]:.3f}, entropy {entropy:.3f} nats")


if __name__ == "__main__":
    main()
