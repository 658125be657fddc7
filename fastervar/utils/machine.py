"""What the machine a figure was measured on can do: the CPU model, its int8 dot-product
instructions, the GPU, and the onnxruntime version.

int8 inference pays only where the CPU multiplies int8 vectors natively (x86 AVX-512 VNNI,
AVX-VNNI or AMX; Arm's dot-product extension): elsewhere an int8 bundle is smaller but no faster,
so every speed record says which CPU made it.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata

# /proc/cpuinfo flag -> the name people know it by
INT8_FLAGS = {"avx2": "AVX2", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX",
              "asimddp": "Arm dot product", "i8mm": "Arm i8mm"}
DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), frozenset(flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def int8_instructions() -> list[str]:
    """The int8-relevant instruction sets this CPU reports, by their common names."""
    flags = _cpuinfo()[1]
    return [name for flag, name in INT8_FLAGS.items() if flag in flags]


def has_int8_dot_product() -> bool | None:
    """Whether the CPU multiplies int8 vectors natively; None where the flags cannot be read."""
    flags = _cpuinfo()[1]
    if not flags:
        return None
    return any(f in flags for f in DOT_PRODUCT)


def int8_note() -> str | None:
    """One line for an int8 export on a CPU without int8 dot-product instructions, else None."""
    if has_int8_dot_product() is not False:
        return None
    return (f"this CPU ({cpu_model()}) has no int8 dot-product instructions (VNNI/AMX): the int8 bundle is "
            "smaller, but not faster here")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(gpu: str | None = None) -> dict:
    """What a speed record needs to be read: CPU model and int8 instructions, cores, GPU (the
    caller names it: this module never imports torch), and the onnxruntime build."""
    ort = next(((d, v) for d in ("onnxruntime", "onnxruntime-gpu") if (v := _version(d))), (None, None))
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "int8_instructions": int8_instructions(),
            "int8_dot_product": has_int8_dot_product(), "gpu": gpu, "machine": platform.machine(),
            "onnxruntime": f"{ort[0]} {ort[1]}" if ort[0] else None, "python": platform.python_version()}
