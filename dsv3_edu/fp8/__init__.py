"""FP8 training as in DeepSeek-V3: formats, fine-grained quantization, Triton kernels, accumulation precision,
and FP8-simulated linear layers. See docs/fp8.md; the pictures are in ``dsv3_edu.viz.fp8``.

    formats       E4M3 / E5M2 bit layouts, every representable value
    quant         torch reference: 1x128 activation tiles, 128x128 weight blocks, coarse baselines
    kernels       Triton act_quant / weight_dequant / fp8_gemm (GPU, or CPU interpreter)
    accumulation  a ~14-bit tensor-core accumulator vs promotion to FP32 every 128 elements
    simulate      qdq_act / qdq_weight / qdq_grad / fp8_linear / Fp8Linear for training

The Triton names are loaded on first use, so ``import dsv3_edu.fp8`` neither imports triton nor sets
TRITON_INTERPRET, and works where triton is not installed (the kernels then raise ImportError when used).
``kernels`` is the one place that sets TRITON_INTERPRET (see its docstring): import it before anything else
imports triton (transformers does) on a machine without a GPU.
"""
from .accumulation import accumulation_error_curve, limited_matmul
from .formats import all_values, decode, format_info, fp8_dtype, fp8_max
from .quant import (
    METHODS,
    act_dequant,
    act_quant,
    block_scaled_matmul,
    per_row_quant,
    per_tensor_quant,
    quant_dequant,
    quant_error,
    weight_dequant,
    weight_quant,
)
from .simulate import Fp8Linear, fp8_linear, qdq_act, qdq_grad, qdq_weight

_KERNEL_NAMES = ("act_quant_triton", "weight_dequant_triton", "fp8_gemm_triton", "fp8_cast_triton",
                 "use_triton_interpreter")


def __getattr__(name):
    """Lazy access to the Triton kernels: ``dsv3_edu.fp8.fp8_gemm_triton`` imports kernels.py on first use."""
    if name in _KERNEL_NAMES:
        from . import kernels
        return getattr(kernels, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def has_triton() -> bool:
    """True when triton can be imported (the kernels can run)."""
    import importlib.util
    return importlib.util.find_spec("triton") is not None


__all__ = [
    "fp8_dtype", "fp8_max", "format_info", "all_values", "decode",
    "act_quant", "act_dequant", "weight_quant", "weight_dequant", "per_tensor_quant", "per_row_quant",
    "quant_dequant", "quant_error", "block_scaled_matmul", "METHODS",
    "limited_matmul", "accumulation_error_curve",
    "qdq_act", "qdq_weight", "qdq_grad", "fp8_linear", "Fp8Linear",
    "has_triton", *_KERNEL_NAMES,
]
