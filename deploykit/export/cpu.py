"""What this CPU offers int8 kernels: the instructions onnxruntime's fast integer GEMMs need.

Read once from ``/proc/cpuinfo`` (Linux); elsewhere nothing is known and the callers keep their portable default.
Pure Python: the CLI and the config read it without importing a runtime.
"""

from __future__ import annotations

import functools
from pathlib import Path

#: Int8 dot-product instructions: with them onnxruntime multiplies u8 x s8 into 32-bit sums in one step
#: (``vpdpbusd``); without them AVX2's ``vpmaddubsw`` sums pairs into 16 bits, which can saturate.
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` cannot be read)."""
    try:
        return flags_of(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def flags_of(cpuinfo: str) -> frozenset[str]:
    """The x86 ``flags`` of a ``/proc/cpuinfo`` text (the first CPU's; empty without that line, as on ARM, whose
    ``Features`` name other instructions: nothing is assumed there)."""
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def int8_dot_product() -> str | None:
    """The first of :data:`DOT_PRODUCT_FLAGS` this CPU has, or None."""
    flags = cpu_flags()
    return next((flag for flag in DOT_PRODUCT_FLAGS if flag in flags), None)


def why_slower(precision: str) -> str:
    """Why a file of ``precision`` can run slower than float32 on this CPU, to follow "because" in the report's note
    (empty: nothing known to say). Issue 23 asks the report to say by how much and why, where int8 does not pay."""
    if precision == "int8" and cpu_flags() and int8_dot_product() is None:
        return (
            "this CPU has no int8 dot-product instructions, AVX-512 VNNI, AVX-VNNI or AMX, so int8 kernels gain "
            "little over float32 ones while quantizing the activations costs extra"
        )
    if precision == "int8":
        return (
            "the smaller int8 products save less than quantizing and dequantizing the activations and the float ops "
            "left between them cost, as on small layers or after an activation int8 does not fuse, such as ELU"
        )
    if precision == "float16":
        return "CPU kernels run most float16 ops through casts to and from float32"
    return ""
