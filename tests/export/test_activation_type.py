"""int8-static's activation type (onnxruntime's ``activation_type``): int8, uint8, or auto on this CPU's features.

The choice is a speed question (uint8 activations take onnxruntime's fast u8 x s8 kernels on CPUs with VNNI,
int8 avoids AVX2's 16-bit saturation): both must give files that validate in onnxruntime, and ``auto`` must follow
the CPU's flags.
"""

from __future__ import annotations

import pytest

from deploykit.errors import ConfigError
from deploykit.export import cpu
from deploykit.export.config import ActivationType, QuantConfig


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma", "avx512f", "avx512_vnni"}, ActivationType.UINT8),
        ({"avx2", "avx_vnni"}, ActivationType.UINT8),
        ({"avx2", "amx_int8"}, ActivationType.UINT8),
        ({"avx2", "fma", "avx512f"}, ActivationType.INT8),  # AVX-512 without VNNI: u8 x s8 sums in 16 bits
        (set(), ActivationType.INT8),  # nothing known (no /proc/cpuinfo): the portable default
    ],
)
def test_auto_follows_the_cpus_int8_dot_product_instructions(monkeypatch, flags, expected):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    assert ActivationType.AUTO.resolved() is expected
    assert QuantConfig().activation_type is ActivationType.AUTO  # the default is decided per CPU, when writing


def test_the_flags_are_read_from_cpuinfo_as_linux_writes_it():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512f avx512_vnni\n\nprocessor\t: 1\n"
    assert cpu.flags_of(x86) >= {"avx2", "avx512_vnni"}
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n"
    assert cpu.flags_of(arm) == frozenset()  # nothing known: auto keeps the portable int8
    assert isinstance(cpu.cpu_flags(), frozenset)  # this machine's, whatever it is


def test_an_explicit_type_is_kept_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    assert QuantConfig(activation_type="int8").activation_type.resolved() is ActivationType.INT8
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset())
    assert QuantConfig(activation_type="uint8").activation_type.resolved() is ActivationType.UINT8


def test_an_unknown_type_is_one_config_error():
    with pytest.raises(ConfigError, match="activation_type must be one of"):
        QuantConfig(activation_type="u8")


def test_the_flag_reaches_the_knobs_of_export_and_optimize():
    from deploykit.cli.export import quantization_options
    from deploykit.cli.main import build_parser

    parser, export = build_parser(), ["export", "m.keras", "--out", "o"]
    assert quantization_options(parser.parse_args([*export, "--activation-type", "uint8"])) == {
        **quantization_options(parser.parse_args(export)),
        "activation_type": "uint8",
    }
    assert quantization_options(parser.parse_args(["optimize", "--activation-type", "int8"]))["activation_type"] == (
        "int8"
    )
    assert "activation_type" not in quantization_options(parser.parse_args(["optimize"]))  # a config file decides


def test_the_reports_try_names_the_resolved_type(monkeypatch):
    from deploykit.export.config import ExportFormat, Quantization
    from deploykit.pipeline.int8_search import Int8Variant

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    onnx = Int8Variant(ExportFormat.ONNX, Quantization.INT8_STATIC, QuantConfig())
    assert onnx.describe().endswith(", uint8 activations")
    dynamic = Int8Variant(ExportFormat.ONNX, Quantization.INT8_DYNAMIC, QuantConfig())
    assert "activations" not in dynamic.describe()  # its activations are quantized at run time


def _activation_zero_point_types(path) -> set[int]:
    """The element types of the zero points of every QuantizeLinear (activations; weights are stored quantized)."""
    import onnx

    proto = onnx.load(str(path))
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    return {inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}


@pytest.mark.slow
@pytest.mark.parametrize("activation_type", ["int8", "uint8"])
def test_both_types_write_files_that_validate_in_onnxruntime(tmp_path, trained_model, digits, activation_type):
    import onnx

    from deploykit.export import export_onnx, validate

    record = export_onnx(
        trained_model,
        tmp_path / f"{activation_type}.onnx",
        quantization="int8-static",
        calibration_data=digits,
        config=QuantConfig(activation_type=activation_type),
    )
    expected = onnx.TensorProto.UINT8 if activation_type == "uint8" else onnx.TensorProto.INT8
    assert _activation_zero_point_types(record.path) == {expected}
    assert validate(record, digits, trained_model, repeats=2).passed
