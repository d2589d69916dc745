"""Floating-point formats from the bits up: FP32, FP16, BF16, FP8 E4M3 (e4m3fn) and FP8 E5M2.

Everything here is integer bit manipulation on the float32 bit pattern, written out by hand
(no ``np.float16`` or torch casts), and matches torch's casts bit for bit:

- :func:`encode` float32 -> codes (``uint16`` for FP16/BF16, ``uint8`` for FP8), round to
  nearest, ties to even, with subnormals;
- :func:`decode` codes -> float32 (exact: every value of these formats is a float32);
- :func:`round_to` = decode(encode(x)), the float32 value a cast would keep;
- :data:`FORMATS`: each format's layout and the numbers derived from it (max, min normal,
  min subnormal, machine epsilon), computed from the bit counts;
- :func:`fields` splits one value into sign / exponent / mantissa for display.

Special values, as torch 2.x casts them (measured; the tests check every rule):

===========  ===================  ==========================  ==============================
format       overflow (|x|>max)   +-inf in                    NaN in
===========  ===================  ==========================  ==============================
fp16         +-inf                +-inf                       sign, quiet bit, top payload bits
bf16         +-inf                +-inf                       0x7FC0 (torch's scalar rule)
fp8_e4m3     +-448 (saturates)    +-448 (no inf in e4m3fn)    sign | 0x7F
fp8_e5m2     +-inf                +-inf                       sign | 0x7F
===========  ===================  ==========================  ==============================

"Overflow" means after rounding: FP16 keeps 65519 as 65504 and sends 65520 (the tie with the
next, missing, power of two) to inf. torch's contiguous vectorized BF16 cast writes NaN as
0xFFFF instead of 0x7FC0; both are NaN, and that is all any NaN code means.

Integer and lookup formats (INT8, INT4, NF4) are in :data:`LAYOUTS` for the chapter's layout
figure; NF4's levels live in :mod:`qlearn.nf4`.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FormatSpec", "FORMATS", "LAYOUTS", "encode", "decode", "round_to", "fields",
           "spec", "int_range", "Fields", "Layout"]

FP32_MANTISSA_BITS = 23          # stored fraction bits of an IEEE-754 binary32
FP32_BIAS = 127                  # binary32 exponent bias, 2**(8-1) - 1
FP32_EXP_MASK = 0x7F800000       # the 8 exponent bits of a binary32
FP32_ABS_MASK = 0x7FFFFFFF       # everything but the sign bit
FP32_QUIET_BIT = 0x00400000      # top fraction bit: set in a quiet NaN
FP32_MIN_EXP = 1 - FP32_BIAS     # exponent of the smallest binary32 normal (and of its subnormals)
MAX_USEFUL_SHIFT = 25            # a 24-bit significand shifted right by >= 25 rounds to 0 (below half)


@dataclass(frozen=True)
class FormatSpec:
    """One floating-point format: its layout and everything derived from the bit counts.

    ``finite_only`` marks the "fn" formats (FP8 E4M3 as NVIDIA/torch define it): no infinity,
    the all-ones exponent holds normal numbers, and only all-ones exponent *and* mantissa is NaN.
    The NaN fields say how a float32 NaN is encoded (the rules torch uses, see module docstring).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    finite_only: bool = False
    saturate: bool = False            # overflow -> +-max instead of +-inf
    nan_code: int = 0                 # the positive NaN code written for a NaN input
    nan_keeps_sign: bool = True
    nan_keeps_payload: bool = False   # copy the top float32 fraction bits into the NaN's mantissa
    torch_dtype: str = ""             # the matching torch dtype name, for the tests and the book
    # derived (filled in __post_init__)
    bits: int = field(init=False)
    bias: int = field(init=False)
    has_inf: bool = field(init=False)
    max_exponent: int = field(init=False)
    min_exponent: int = field(init=False)
    max: float = field(init=False)
    min_normal: float = field(init=False)
    min_subnormal: float = field(init=False)
    epsilon: float = field(init=False)
    decimal_digits: float = field(init=False)
    max_code: int = field(init=False)
    inf_code: int = field(init=False)

    def __post_init__(self):
        e, m = self.exponent_bits, self.mantissa_bits
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("bits", 1 + e + m)
        set_("bias", 2 ** (e - 1) - 1)
        set_("has_inf", not self.finite_only)
        all_ones = 2 ** e - 1
        # IEEE formats reserve the all-ones exponent for inf/NaN; "fn" formats use it for numbers
        top_exp_field = all_ones if self.finite_only else all_ones - 1
        top_mant = (2 ** m - 2) if self.finite_only else (2 ** m - 1)  # fn: all-ones mantissa is NaN
        set_("max_exponent", top_exp_field - self.bias)
        set_("min_exponent", 1 - self.bias)
        set_("max", float((1 + top_mant / 2 ** m) * 2.0 ** self.max_exponent))
        set_("min_normal", float(2.0 ** self.min_exponent))
        set_("min_subnormal", float(2.0 ** (self.min_exponent - m)))
        set_("epsilon", float(2.0 ** -m))
        set_("decimal_digits", float((m + 1) * np.log10(2.0)))
        set_("max_code", (top_exp_field << m) | top_mant)
        set_("inf_code", -1 if self.finite_only else all_ones << m)

    @property
    def code_dtype(self) -> np.dtype:
        """The unsigned integer dtype that holds one code."""
        return np.dtype({8: np.uint8, 16: np.uint16, 32: np.uint32}[self.bits])

    @property
    def sign_mask(self) -> int:
        return 1 << (self.bits - 1)


def _make_formats() -> dict[str, FormatSpec]:
    fmts = [
        FormatSpec("fp32", 8, 23, nan_code=FP32_EXP_MASK | FP32_QUIET_BIT, nan_keeps_payload=True,
                   torch_dtype="float32"),
        FormatSpec("fp16", 5, 10, nan_code=0x7E00, nan_keeps_payload=True, torch_dtype="float16"),
        FormatSpec("bf16", 8, 7, nan_code=0x7FC0, nan_keeps_sign=False, torch_dtype="bfloat16"),
        FormatSpec("fp8_e4m3", 4, 3, finite_only=True, saturate=True, nan_code=0x7F,
                   torch_dtype="float8_e4m3fn"),
        FormatSpec("fp8_e5m2", 5, 2, nan_code=0x7F, torch_dtype="float8_e5m2"),
    ]
    return {f.name: f for f in fmts}


FORMATS: dict[str, FormatSpec] = _make_formats()
_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
            "e4m3": "fp8_e4m3", "e4m3fn": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3",
            "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2"}


def spec(fmt: str | FormatSpec) -> FormatSpec:
    """The :class:`FormatSpec` for a name in :data:`FORMATS` (or a torch-style alias)."""
    if isinstance(fmt, FormatSpec):
        return fmt
    key = _ALIASES.get(fmt, fmt) if isinstance(fmt, str) else None
    if key not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)} "
                         f"(or an alias: {sorted(_ALIASES)})")
    return FORMATS[key]


def _as_float32(x, where: str) -> np.ndarray:
    if hasattr(x, "detach"):
        raise ValueError(f"{where}: expected a numpy float32 array, got a torch tensor "
                         f"(pass x.detach().cpu().numpy())")
    arr = np.asarray(x)
    if arr.dtype != np.float32:
        raise ValueError(f"{where}: expected dtype float32, got {arr.dtype} "
                         f"(convert with np.asarray(x, dtype=np.float32))")
    return arr


# --- encode: float32 -> codes -------------------------------------------------------------------

def encode(x: np.ndarray, fmt: str) -> np.ndarray:
    """Round float32 values to ``fmt`` and return their bit patterns.

    Args:
        x: any shape, float32 (NaN and +-inf allowed; encoded per the format's rules).
        fmt: a key of :data:`FORMATS` ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp32").
    Returns:
        codes, same shape as ``x``: uint16 (fp16, bf16), uint8 (fp8), uint32 (fp32).
    Rounding is to nearest, ties to even, with gradual underflow (subnormals).
    """
    f = spec(fmt)
    x = _as_float32(x, f"encode(x, {f.name!r})")
    if f.mantissa_bits == FP32_MANTISSA_BITS:
        return x.view(np.uint32).copy()
    b = x.view(np.uint32).astype(np.int64)
    sign = b >> 31
    mag = b & FP32_ABS_MASK
    exp_field = mag >> FP32_MANTISSA_BITS
    frac = mag & ((1 << FP32_MANTISSA_BITS) - 1)
    is_nan = mag > FP32_EXP_MASK
    is_inf = mag == FP32_EXP_MASK

    # value = sig * 2**(e32 - 23); fp32 subnormals (exp_field 0) have e32 = -126 and no implicit 1
    e32 = np.maximum(exp_field, 1) - FP32_BIAS
    sig = np.where(exp_field > 0, frac | (1 << FP32_MANTISSA_BITS), frac)
    # the target's spacing at this magnitude is 2**(max(e32, emin) - m): drop that many bits
    e_eff = np.maximum(e32, f.min_exponent)
    shift = np.minimum(FP32_MANTISSA_BITS - f.mantissa_bits + (e_eff - e32), MAX_USEFUL_SHIFT)
    kept = sig >> shift
    rest = sig & ((np.int64(1) << shift) - 1)
    half = np.int64(1) << (shift - 1)
    round_up = (rest > half) | ((rest == half) & ((kept & 1) == 1))
    kept = kept + round_up
    # kept is the significand in units of 2**(e_eff - m); a carry to 2**(m+1) moves into the
    # exponent by itself because the exponent field sits directly above the mantissa
    code = ((e_eff + f.bias - 1) << f.mantissa_bits) + kept

    overflow = (code > f.max_code) | is_inf
    code = np.where(overflow, f.max_code if f.saturate else f.inf_code, code)
    if f.nan_keeps_payload:
        payload = frac >> (FP32_MANTISSA_BITS - f.mantissa_bits)
        nan = f.nan_code | payload
    else:
        nan = np.full_like(code, f.nan_code)
    code = np.where(is_nan, nan, code)
    if f.nan_keeps_sign:
        code = code | (sign << (f.bits - 1))
    else:
        code = code | np.where(is_nan, 0, sign << (f.bits - 1))
    return code.astype(f.code_dtype)


# --- decode: codes -> float32 -------------------------------------------------------------------

def decode(codes: np.ndarray, fmt: str) -> np.ndarray:
    """The float32 value of each code (exact).

    Args:
        codes: any shape, uint16 (fp16, bf16), uint8 (fp8) or uint32 (fp32).
        fmt: a key of :data:`FORMATS`.
    Returns:
        float32, same shape. NaN codes give a quiet float32 NaN keeping the sign and payload.
    """
    f = spec(fmt)
    if hasattr(codes, "detach"):
        raise ValueError(f"decode(codes, {f.name!r}): expected a numpy {f.code_dtype} array, got a "
                         f"torch tensor (pass t.view(torch.uint{f.bits}).numpy())")
    codes = np.asarray(codes)
    if codes.dtype != f.code_dtype:
        raise ValueError(f"decode(codes, {f.name!r}): expected dtype {f.code_dtype} "
                         f"({f.bits}-bit codes), got {codes.dtype} (use encode() to make codes, "
                         f"or .astype(np.{f.code_dtype}) if they already hold {f.name} bit patterns)")
    if f.mantissa_bits == FP32_MANTISSA_BITS:
        return codes.view(np.float32).copy()
    m = f.mantissa_bits
    c = codes.astype(np.int64)
    sign = (c >> (f.bits - 1)) << 31
    e = (c >> m) & (2 ** f.exponent_bits - 1)
    mant = c & (2 ** m - 1)
    frac_shift = FP32_MANTISSA_BITS - m

    # normal: same significand, exponent re-biased
    out = ((e - f.bias + FP32_BIAS) << FP32_MANTISSA_BITS) | (mant << frac_shift)
    # subnormal: mant * 2**(emin - m); renormalise to a float32 normal when float32 has room
    lead = np.zeros_like(mant)                       # position of mant's leading 1 (mant >= 1)
    for k in range(1, m):
        lead += mant >= (1 << k)
    e32 = f.min_exponent - m + lead                  # unbiased exponent of the subnormal value
    sub_normal32 = ((e32 + FP32_BIAS) << FP32_MANTISSA_BITS) | (
        (mant - (np.int64(1) << lead)) << (FP32_MANTISSA_BITS - lead))
    sub_sub32 = mant << max(f.min_exponent - m - (FP32_MIN_EXP - FP32_MANTISSA_BITS), 0)
    sub = np.where(e32 >= FP32_MIN_EXP, sub_normal32, sub_sub32)
    out = np.where(e == 0, np.where(mant == 0, 0, sub), out)
    # specials
    all_ones = e == 2 ** f.exponent_bits - 1
    if f.finite_only:
        is_nan = all_ones & (mant == 2 ** m - 1)
        is_inf = np.zeros_like(is_nan)
    else:
        is_nan = all_ones & (mant != 0)
        is_inf = all_ones & (mant == 0)
    out = np.where(is_inf, FP32_EXP_MASK, out)
    out = np.where(is_nan, FP32_EXP_MASK | FP32_QUIET_BIT | (mant << frac_shift), out)
    return (out | sign).astype(np.uint32).view(np.float32)


def round_to(x: np.ndarray, fmt: str) -> np.ndarray:
    """``decode(encode(x, fmt), fmt)``: the float32 value a cast to ``fmt`` keeps.

    x: any shape, float32. Returns float32, same shape.
    """
    return decode(encode(x, fmt), fmt)


# --- display ------------------------------------------------------------------------------------

Fields = namedtuple("Fields", "sign exponent mantissa bits value kind code")
Fields.__doc__ = """One value in one format: the stored fields (integers), the bit string
(sign, exponent, mantissa concatenated), the value the code stands for, and its kind
("normal", "subnormal", "zero", "inf" or "nan")."""


def fields(value: float, fmt: str) -> Fields:
    """Round ``value`` to ``fmt`` and split the result into its fields.

    ``value``: a Python float or float32 scalar (converted to float32 first, as a cast would).
    """
    f = spec(fmt)
    v = np.asarray(value)
    if v.ndim != 0 or not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise ValueError(f"fields(value, {f.name!r}): expected one real number, got {value!r}")
    code = int(encode(v.astype(np.float32).reshape(1), f)[0])
    m = f.mantissa_bits
    s, e, mant = code >> (f.bits - 1), (code >> m) & (2 ** f.exponent_bits - 1), code & (2 ** m - 1)
    val = float(decode(np.array([code], dtype=f.code_dtype), f)[0])
    if np.isnan(val):
        kind = "nan"
    elif np.isinf(val):
        kind = "inf"
    elif e == 0:
        kind = "zero" if mant == 0 else "subnormal"
    else:
        kind = "normal"
    return Fields(s, e, mant, format(code, f"0{f.bits}b"), val, kind, code)


# --- integer and lookup formats, for the layout table -------------------------------------------

def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """(lowest, highest) integer a two's-complement (or unsigned) ``bits``-bit integer holds."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    if not isinstance(signed, (bool, np.bool_)):
        raise ValueError(f"signed must be True or False, got {signed!r}")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


Layout = namedtuple("Layout", "name bits fields description")
Layout.__doc__ = "A storage layout for the chapter's figure: fields = ((label, n_bits), ...), MSB first."


def _layouts() -> list[Layout]:
    out = []
    for f in FORMATS.values():
        out.append(Layout(f.name.upper().replace("_", " "), f.bits,
                          (("sign", 1), ("exponent", f.exponent_bits), ("mantissa", f.mantissa_bits)),
                          f"float: bias {f.bias}, {'no inf' if f.finite_only else 'IEEE inf/NaN'}"))
    for b in (8, 4):
        lo, hi = int_range(b)
        out.append(Layout(f"INT{b}", b, (("sign", 1), ("value", b - 1)),
                          f"integer {lo}..{hi}, times a scale"))
    out.append(Layout("NF4", 4, (("index", 4),),
                      "lookup: 16 normal-quantile levels in [-1, 1], times a block absmax"))
    return out


LAYOUTS: list[Layout] = _layouts()
