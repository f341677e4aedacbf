"""int8 artifacts of a folded input Normalization: accuracy, size and the largest requantization multiplier.

For the shipped digits model and, when ``../shared`` is present, the book's Fashion-MNIST model
(``../shared/models/book_fashion_bn_dropout.keras``, whose int8 TFLite used to abort LiteRT), exports int8
TFLite and static / dynamic int8 ONNX and validates each (in the isolated worker: a native crash is a row,
not the end of the run). The largest FULLY_CONNECTED requantization multiplier of the TFLite file is read
without the XNNPACK delegate; XNNPACK refuses >= 256. Writes ``benchmarks/results/int8_prep.json`` and ``.md``.

    python benchmarks/bench_int8_prep.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import FASHION, ROOT, write_results  # noqa: E402  (puts the repository on sys.path)

from deploykit.data.dataset import load_dataset  # noqa: E402
from deploykit.errors import RuntimeCrashError  # noqa: E402
from deploykit.export import export_onnx, export_tflite, validate  # noqa: E402

BOOK = ROOT.parent / "shared" / "models" / "book_fashion_bn_dropout.keras"


def max_multiplier(path) -> float:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    scales = {t["index"]: t["quantization_parameters"]["scales"] for t in interpreter.get_tensor_details()}
    return max(
        float((scales[op["inputs"][0]][0] * scales[op["inputs"][1]] / scales[op["outputs"][0]][0]).max())
        for op in interpreter._get_ops_details()
        if op["op_name"] == "FULLY_CONNECTED"
    )


def _rows(name: str, model_path, data_path, folder: Path) -> list[dict]:
    from deploykit.io.models import load_model

    model, data = load_model(model_path), load_dataset(data_path)
    exports = {
        "int8 TFLite": lambda p: export_tflite(model, p.with_suffix(".tflite"), "int8", representative_data=data),
        "int8 ONNX static": lambda p: export_onnx(
            model, p.with_suffix(".onnx"), quantization="int8-static", calibration_data=data
        ),
        "int8 ONNX dynamic": lambda p: export_onnx(
            model, p.with_suffix(".onnx"), quantization="int8-dynamic", calibration_data=data
        ),
    }
    rows = []
    for variant, export in exports.items():
        record = export(folder / f"{name}_{variant.replace(' ', '_')}")
        row = {
            "model": name,
            "variant": variant,
            "size": record.size_bytes,
            "gzip": record.gzip_bytes,
            "preparation": record.preparation,
            "max_multiplier": max_multiplier(record.path) if record.path.suffix == ".tflite" else None,
        }
        try:
            report = validate(record, data, model, repeats=5, check=False)
            row.update(
                accuracy=report.accuracy, reference=report.reference_accuracy, agreement=report.agreement, error=""
            )
        except RuntimeCrashError as exc:
            row.update(accuracy=None, reference=None, agreement=None, error=str(exc))
        rows.append(row)
    return rows


def main() -> None:
    cases = [("digits", ROOT / "models" / "digits_default.keras", "digits")]
    if BOOK.is_file() and FASHION.is_file():
        cases.append(("book fashion", BOOK, FASHION))
    else:
        print(f"skipping the book model: {BOOK} or {FASHION} is absent")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for case in cases for row in _rows(*case, Path(tmp))]
    lines = [
        "## int8 of a folded input Normalization",
        "",
        "| model | variant | accuracy | Δ vs float (pt) | agreement | size | gzip | max requant. multiplier | result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = r["accuracy"] is not None
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - r['reference']):+.2f} | "
            f"{r['agreement']:.2%} | {r['size']:,} | {r['gzip']:,} | {_fmt(r['max_multiplier'])} | loads |"
            if ok
            else f"| {r['model']} | {r['variant']} | | | | {r['size']:,} | {r['gzip']:,} | "
            f"{_fmt(r['max_multiplier'])} | {r['error']} |"
        )
    write_results("int8_prep", {"rows": rows}, "\n".join(lines))


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
