"""The two FP8 formats laid bare: E4M3 (what DeepSeek-V3 uses for every GEMM input) and E5M2.

An FP8 number is 1 sign bit, E exponent bits and M mantissa bits:

    normal    (exponent field e > 0):  (-1)^s * 2^(e - bias) * (1 + m / 2^M)
    subnormal (exponent field e = 0):  (-1)^s * 2^(1 - bias) * (m / 2^M)

E4M3 ("fn" = finite, no infinities) gives up infinities and keeps one NaN pattern per sign (S.1111.111), so its
largest value is 1.75 * 2^8 = 448. E5M2 follows IEEE rules (infinities and NaNs use the top exponent), trading
one mantissa bit for range: largest value 57344 but only 4 values per power of two.

Facts come from ``torch.finfo`` and are cross-checked against all 256 bit patterns decoded by torch
(``uint8 -> view(float8 dtype)``): see :func:`all_values` and the tests.
"""
from __future__ import annotations

import math

import torch

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_dtype(fmt: str | torch.dtype) -> torch.dtype:
    """"e4m3" -> torch.float8_e4m3fn, "e5m2" -> torch.float8_e5m2 (the dtypes themselves pass through)."""
    if isinstance(fmt, torch.dtype):
        if fmt in FP8_DTYPES.values():
            return fmt
    elif fmt in FP8_DTYPES:
        return FP8_DTYPES[fmt]
    raise ValueError(f"unknown FP8 format {fmt!r}: use one of {sorted(FP8_DTYPES)}")


def fp8_max(fmt: str | torch.dtype = "e4m3") -> float:
    """Largest finite value: 448 for E4M3, 57344 for E5M2. Scales are amax / fp8_max."""
    return float(torch.finfo(fp8_dtype(fmt)).max)


def format_info(fmt: str | torch.dtype) -> dict:
    """Bit layout and range of an FP8 format, computed from ``torch.finfo``.

    Keys: name, dtype, bits, exponent_bits, mantissa_bits, bias, max_normal, min_normal, min_subnormal,
    eps (spacing just above 1), spacing_below_1, values_per_octave (how many values between 2^k and 2^(k+1)).
    """
    dtype = fp8_dtype(fmt)
    fi = torch.finfo(dtype)
    mantissa_bits = round(-math.log2(fi.eps))        # eps = 2^-M: the gap between 1 and the next value
    exponent_bits = fi.bits - 1 - mantissa_bits
    bias = 1 - round(math.log2(fi.smallest_normal))  # smallest normal = 2^(1 - bias)
    return {
        "name": {torch.float8_e4m3fn: "E4M3", torch.float8_e5m2: "E5M2"}[dtype],
        "dtype": dtype,
        "bits": fi.bits,
        "exponent_bits": exponent_bits,
        "mantissa_bits": mantissa_bits,
        "bias": bias,
        "max_normal": float(fi.max),
        "min_normal": float(fi.smallest_normal),
        "min_subnormal": float(fi.smallest_normal * fi.eps),  # 2^(1 - bias - M)
        "eps": float(fi.eps),
        "spacing_below_1": float(fi.eps) / 2,
        "values_per_octave": 2 ** mantissa_bits,
    }


def all_bit_patterns(fmt: str | torch.dtype) -> torch.Tensor:
    """All 256 FP8 bit patterns decoded by torch, as float32 (NaN / inf included), index = the byte value."""
    return torch.arange(256, dtype=torch.uint8).view(fp8_dtype(fmt)).float()  # (256,)


def all_values(fmt: str | torch.dtype) -> torch.Tensor:
    """The finite representable values, sorted, +0 and -0 merged (253 for E4M3, 247 for E5M2), float32."""
    v = all_bit_patterns(fmt)
    return torch.unique(v[torch.isfinite(v)])  # unique() sorts


def decode(byte: int, fmt: str | torch.dtype = "e4m3") -> dict:
    """Split one byte into its fields and show how they make the value (for the notebook's bit explorer)."""
    if not 0 <= int(byte) <= 255:
        raise ValueError(f"byte must be in [0, 255], got {byte}")
    info = format_info(fmt)
    E, M, bias = info["exponent_bits"], info["mantissa_bits"], info["bias"]
    sign, exponent, mantissa = byte >> 7, (byte >> M) & ((1 << E) - 1), byte & ((1 << M) - 1)
    value = all_bit_patterns(fmt)[byte].item()
    if not math.isfinite(value):
        formula = f"{value} (reserved bit pattern)"
    elif exponent == 0:
        formula = f"(-1)^{sign} * 2^{1 - bias} * {mantissa}/{2 ** M}"
    else:
        formula = f"(-1)^{sign} * 2^({exponent}-{bias}) * (1 + {mantissa}/{2 ** M})"
    bits = format(byte, "08b")
    return {"bits": f"{bits[0]}.{bits[1:1 + E]}.{bits[1 + E:]}", "sign": sign, "exponent": exponent,
            "mantissa": mantissa, "subnormal": exponent == 0 and mantissa != 0, "value": value,
            "formula": formula}
