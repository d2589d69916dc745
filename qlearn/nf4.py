"""NF4 and FP4: bitsandbytes' 4-bit block formats (the storage behind QLoRA), bit for bit.

A weight tensor is flattened (row-major) and cut into blocks of ``blocksize`` values. Each block
stores one float32 scale, its absolute maximum, and every value as a 4-bit index into a fixed
16-entry code book of numbers in [-1, 1]:

    x ≈ code[nibble] * absmax_block

NF4's code book holds quantiles of N(0, 1) (QLoRA, Dettmers et al. 2023), FP4's a tiny float
with 1 sign, 2 exponent and 1 mantissa bit. Two nibbles share a byte, the first element in the
HIGH nibble. With ``compress_statistics=True`` ("double quantization") the float32 absmax
constants are themselves quantized: their mean is subtracted and the rest is stored as 8-bit
codes of bitsandbytes' signed dynamic map, with one float32 scale per 256 blocks.

This module reproduces bitsandbytes 0.50.2 on the CPU exactly (see ``tests/test_nf4.py``):

* scaling is reciprocal-then-multiply, ``x * (1 / max(absmax, 1e-38))``, clamped to [-1, 1];
  a last block shorter than ``blocksize`` is instead *divided* by its clamped absmax, and that
  clamped absmax is what is stored for it (bitsandbytes' default torch kernel does this);
* the code index is the number of midpoints strictly below the scaled value (a tie goes to the
  lower code), FP4 mapping sorted buckets to nibbles through its argsort;
* the nested 8-bit quantizer picks codes through a 65536-bin lookup table, as the native CPU
  kernel does (the GPU uses an exact nearest search, so CPU and GPU nested bytes differ);
* the native CPU dequantizer's FP4 table has -0.0 at nibble 8.

Every public function has a readable numpy reference (``backend="numpy"``) and numba kernels
(``backend="numba"``, the default); the tests check they agree bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numba
import numpy as np
import torch

from qlearn import _threads, validate

_threads.launch()  # numba's pool now, so that its start does not reset torch's thread count

__all__ = [
    "NF4_CODE", "FP4_CODE", "INT4_CODE", "BLOCKSIZES", "QUANT_TYPES", "NESTED_BLOCKSIZE",
    "nf4_code_from_quantiles", "dynamic_code", "QuantState", "quantize_4bit", "dequantize_4bit",
    "fake_quantize_4bit", "bits_per_weight", "Linear4bit",
]

# ---------------------------------------------------------------------------------------------
# Code books
# ---------------------------------------------------------------------------------------------

#: NF4 levels, nibble 0..15, exactly the float32 values bitsandbytes ships (sorted ascending).
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)

#: FP4 (1 sign, 2 exponent, 1 mantissa bit, exponent bias 2) in nibble order, divided by its
#: largest magnitude 12. Nibble 8 is "-0" in the bit pattern but +0.0 here, as in bitsandbytes'
#: Python table (which is also what its serialized ``quant_map`` holds).
FP4_CODE = (np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3],
                     dtype=np.float32) / np.float32(12.0)).astype(np.float32)

#: bitsandbytes' "int4" code book: the symmetric integer grid -7..7 scaled to [-1, 1] (two zeros).
#: Not accepted by ``quantize_4bit`` (bitsandbytes rejects it too); used for comparisons.
INT4_CODE = (np.array([7, 6, 5, 4, 3, 2, 1, 0, 0, -1, -2, -3, -4, -5, -6, -7],
                      dtype=np.float32) / np.float32(7.0)).astype(np.float32)

#: The table inside bitsandbytes' native CPU FP4 dequantizer: like FP4_CODE but nibble 8 is -0.0.
_FP4_DEQUANT = FP4_CODE.copy()
_FP4_DEQUANT[8] = np.float32(-0.0)

QUANT_TYPES = ("nf4", "fp4")
#: Block sizes bitsandbytes' quantize_4bit accepts.
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Double quantization groups 256 absmax constants under one float32 scale.
NESTED_BLOCKSIZE = 256
#: absmax is clamped to this before taking its reciprocal, so an all-zero block does not divide
#: by zero (1e-38 is just above float32's smallest normal number, 1.18e-38).
ABSMAX_FLOOR = np.float32(1e-38)
#: Bins of the native CPU nested quantizer's lookup table (one per uint16 value).
LUT_BINS = 65536
#: bitsandbytes calls create_normal_map(offset=0.9677083): the outermost quantile probability.
#: It is the mean of 1 - 1/(2*15) and 1 - 1/(2*16) (the two half-sides have 8 and 7 positive /
#: negative levels), truncated to 7 digits as in the QLoRA code.
NF4_QUANTILE_OFFSET = 0.9677083


def nf4_code_from_quantiles(offset: float = NF4_QUANTILE_OFFSET) -> np.ndarray:
    """Derive the 16 NF4 levels from quantiles of N(0, 1), as the QLoRA paper does.

    The positive half takes 8 quantiles at probabilities evenly spaced from ``offset`` down to
    0.5 (excluding 0.5), the negative half 7 such quantiles, and an exact zero is added, so zero
    is representable and the code is asymmetric (8 positive, 7 negative levels). Dividing by the
    largest level maps the code onto [-1, 1]. Precision follows bitsandbytes'
    ``create_normal_map``: the probabilities are a float32 ``linspace``, the quantiles are
    evaluated in float64 (``torch.special.ndtri``, the inverse normal CDF), rounded to float32
    and normalized in float32. With that order of operations the result equals NF4_CODE bit for
    bit; computing everything in float64 instead moves some levels by up to a few float32 ulps.

    Returns:
        code: (16,) float32, ascending.
    """
    def quantiles(k):  # k probabilities from offset down to 0.5 (exclusive)
        p = torch.linspace(offset, 0.5, k + 1, dtype=torch.float32)[:-1]
        return torch.special.ndtri(p.to(torch.float64))

    pos, neg = quantiles(8), -quantiles(7)
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).float().sort().values
    return (v / v.max()).numpy()


def dynamic_code(signed: bool = True) -> np.ndarray:
    """bitsandbytes' 8-bit "dynamic" code (``create_dynamic_map``): the nested-absmax code book.

    A dynamic exponent: for decade ``10**-6 .. 10**0`` there is a run of linearly spaced
    fractions (midpoints of ``linspace(0.1, 1)``), the number of fraction values doubling with
    each decade (the exponent's unary indicator bits eat fewer bits of the byte), plus 0 and 1.
    Arithmetic mirrors the original (float32 linspace and midpoints, scaled by the decade).

    Returns:
        code: (256,) float32, ascending.
    """
    max_exponent_bits, non_sign_bits = 7, 7  # 8-bit code: 1 sign bit + 7 others
    data: list[float] = []
    for i in range(max_exponent_bits):
        n = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1
        bounds = torch.linspace(0.1, 1, n, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        decade = 10 ** (-(max_exponent_bits - 1) + i)
        data += (decade * means).tolist()
        if signed:
            data += (-decade * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return torch.tensor(data, dtype=torch.float32).sort().values.numpy()


def _midpoints_and_order(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted bucket boundaries (15,) float32 and the nibble of each sorted bucket (16,) uint8."""
    order = np.argsort(code, kind="stable")
    s = code[order]
    return ((s[:-1] + s[1:]) / np.float32(2)).astype(np.float32), order.astype(np.uint8)


_DYNAMIC = dynamic_code(True)


def _dynamic_lut(code: np.ndarray) -> np.ndarray:
    """The CPU nested quantizer's table: for bin i, the nearest code to -1 + 2 i / 65535.

    Ties go to the lower code (``searchsorted`` on float32 midpoints, 'left').
    Returns (65536,) uint8.
    """
    centres = (np.float32(-1) + np.float32(2) * np.arange(LUT_BINS, dtype=np.float32)
               / np.float32(LUT_BINS - 1)).astype(np.float32)
    mid = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    return np.searchsorted(mid, centres, side="left").astype(np.uint8)


_DYNAMIC_LUT = _dynamic_lut(_DYNAMIC)


_TABLES: dict = {}


def _tables(quant_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(quant code, dequant code, midpoints, nibble of each sorted bucket) for a 4-bit type."""
    if quant_type not in _TABLES:
        _TABLES[quant_type] = _make_tables(quant_type)
    return _TABLES[quant_type]


def _make_tables(quant_type: str):
    code = {"nf4": NF4_CODE, "fp4": FP4_CODE, "int4": INT4_CODE}[quant_type]
    deq = _FP4_DEQUANT if quant_type == "fp4" else code
    mid, order = _midpoints_and_order(code)
    return code, deq, mid, order


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------

@dataclass
class QuantState:
    """Everything needed to dequantize a 4-bit tensor.

    Fields:
        absmax: (n_blocks,) float32 per-block absmax, or (n_blocks,) uint8 nested codes when
            compressed (indices into ``nested_code``).
        nested_absmax: (ceil(n_blocks / 256),) float32, or None when not compressed.
        offset: float32 scalar (mean of the original absmax), or None when not compressed.
        blocksize: values per block (one of BLOCKSIZES).
        quant_type: "nf4" or "fp4".
        shape: shape of the original tensor.
        dtype: dtype name of the original tensor ("float32", "float16", "bfloat16").
        code: (16,) float32, the 4-bit code book (bitsandbytes' ``quant_map``).
        nested_code: (256,) float32 dynamic code, or None.
        nested_blocksize: 256.
    """

    absmax: np.ndarray
    nested_absmax: np.ndarray | None
    offset: np.float32 | None
    blocksize: int
    quant_type: str
    shape: tuple
    dtype: str = "float32"
    code: np.ndarray = field(default=None, repr=False)
    nested_code: np.ndarray | None = field(default=None, repr=False)
    nested_blocksize: int = NESTED_BLOCKSIZE

    def __post_init__(self):
        if self.code is None:
            self.code = _tables(self.quant_type)[0].copy()
        if self.nested_absmax is not None and self.nested_code is None:
            self.nested_code = _DYNAMIC.copy()

    @property
    def nested(self) -> bool:
        return self.nested_absmax is not None

    def check(self) -> "QuantState":
        """Raise ValueError unless the fields agree with each other (shapes, dtypes, nesting);
        run on load (:meth:`from_dict`) and before dequantizing."""
        _check_args(self.blocksize, self.quant_type)
        shape = tuple(self.shape)
        if not shape or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                            for d in shape):
            raise ValueError(f"state.shape must be a tuple of positive ints, got {self.shape!r}")
        n_blocks = -(-math.prod(shape) // self.blocksize)
        absmax = np.asarray(self.absmax)
        if absmax.shape != (n_blocks,):
            raise ValueError(f"state.absmax must have shape ({n_blocks},) for {shape} in blocks "
                             f"of {self.blocksize}, got {absmax.shape}")
        _check_code_book(self.code, "state.code", 16)
        if self.dtype not in _FLOAT_TORCH.values():
            raise ValueError(f"state.dtype must be one of {tuple(_FLOAT_TORCH.values())}, got "
                             f"{self.dtype!r}")
        if not self.nested:
            if absmax.dtype != np.float32:
                raise ValueError(f"state.absmax must be float32 when not compressed, got "
                                 f"{absmax.dtype}" + (" (uint8 nested codes: the compressed state "
                                                      "is missing nested_absmax)"
                                                      if absmax.dtype == np.uint8 else ""))
            if not (np.isfinite(absmax).all() and (absmax >= 0).all()):
                raise ValueError("state.absmax must be finite and >= 0")
            return self
        if absmax.dtype != np.uint8:
            raise ValueError(f"a compressed state's absmax holds uint8 nested codes, got "
                             f"{absmax.dtype}")
        nbs = self.nested_blocksize
        if isinstance(nbs, bool) or not isinstance(nbs, (int, np.integer)) or nbs < 1:
            raise ValueError(f"state.nested_blocksize must be a positive int, got {nbs!r}")
        nested = np.asarray(self.nested_absmax)
        want = (-(-n_blocks // nbs),)
        if nested.shape != want or nested.dtype != np.float32 or not np.isfinite(nested).all():
            raise ValueError(f"state.nested_absmax must be finite float32 of shape {want}, got "
                             f"{nested.shape} {nested.dtype}")
        _check_code_book(self.nested_code, "state.nested_code", 256)
        if self.offset is None or not np.isfinite(np.float32(self.offset)):
            raise ValueError(f"a compressed state needs a finite offset, got {self.offset!r}")
        return self

    def absmax_dequant(self) -> np.ndarray:
        """(n_blocks,) float32: the per-block scale dequantization uses."""
        if not self.nested:
            return self.absmax
        return _absmax_dequant_ref(self.absmax, self.nested_absmax, self.offset, self.nested_code,
                                   self.nested_blocksize)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """bitsandbytes' serialized layout (``QuantState.as_dict(packed=True)``), for safetensors.

        Keys: ``absmax``, ``quant_map`` and, when compressed, ``nested_absmax`` and
        ``nested_quant_map``; the non-tensor fields go as JSON bytes in a uint8 tensor under
        ``quant_state.bitsandbytes__<quant_type>``.
        """
        meta = {"quant_type": self.quant_type, "blocksize": int(self.blocksize),
                "dtype": self.dtype, "shape": [int(s) for s in self.shape]}
        out = {"absmax": torch.from_numpy(np.ascontiguousarray(self.absmax).copy()),
               "quant_map": torch.from_numpy(self.code.copy())}
        if self.nested:
            out["nested_absmax"] = torch.from_numpy(self.nested_absmax.copy())
            out["nested_quant_map"] = torch.from_numpy(self.nested_code.copy())
            meta.update(nested_blocksize=int(self.nested_blocksize), nested_dtype="float32",
                        nested_offset=float(self.offset))
        blob = json.dumps(meta).encode("utf-8")
        out[f"quant_state.bitsandbytes__{self.quant_type}"] = torch.tensor(list(blob),
                                                                           dtype=torch.uint8)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "QuantState":
        """Inverse of :meth:`as_dict`; keys may carry a prefix such as ``"weight."``."""
        d = {k.split(".")[-1] if "quant_state" not in k else k: v for k, v in d.items()}
        keys = [k for k in d if "quant_state.bitsandbytes__" in k]
        if len(keys) != 1:
            raise ValueError(f"expected exactly one 'quant_state.bitsandbytes__nf4|fp4' entry, "
                             f"got {keys} (pass the tensors saved by as_dict())")
        try:
            meta = json.loads(bytes(np.asarray(d[keys[0]], dtype=np.uint8)).decode("utf-8"))
        except (ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"corrupt quant state: {keys[0]} is not JSON bytes ({e})") from None
        need = {"quant_type", "blocksize", "dtype", "shape"}
        nested = "nested_absmax" in d
        missing = sorted((need | ({"nested_offset"} if nested else set())) - set(meta)) + \
            sorted({"absmax", "quant_map"} - set(d)) + \
            (["nested_quant_map"] if nested and "nested_quant_map" not in d else [])
        if missing:
            raise ValueError(f"corrupt quant state: missing {missing}")
        if not nested and np.asarray(d["absmax"]).dtype in (np.uint8, torch.uint8):
            raise ValueError("corrupt quant state: absmax holds uint8 nested codes but "
                             "nested_absmax is missing")

        def arr(k):
            v = d[k]
            return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

        return cls(absmax=arr("absmax"),
                   nested_absmax=arr("nested_absmax") if nested else None,
                   offset=np.float32(meta["nested_offset"]) if nested else None,
                   blocksize=int(meta["blocksize"]), quant_type=meta["quant_type"],
                   shape=tuple(meta["shape"]), dtype=meta["dtype"], code=arr("quant_map"),
                   nested_code=arr("nested_quant_map") if nested else None,
                   nested_blocksize=int(meta.get("nested_blocksize", NESTED_BLOCKSIZE))).check()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _check_code_book(code, name: str, n: int) -> None:
    c = np.asarray(code)
    if c.shape != (n,) or c.dtype != np.float32:
        raise ValueError(f"{name} must be a ({n},) float32 code book, got {c.shape} {c.dtype}")


_FLOAT_TORCH = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _as_f32(x, name: str = "x") -> tuple[np.ndarray, str, bool]:
    """Flatten x to contiguous float32 numpy (n,), with its dtype name and whether it was torch."""
    if isinstance(x, torch.Tensor):
        if x.dtype not in _FLOAT_TORCH:
            raise ValueError(f"{name} must be a float32/float16/bfloat16 tensor, got {x.dtype} "
                             f"(convert with x.float())")
        return (x.detach().cpu().reshape(-1).to(torch.float32).numpy(), _FLOAT_TORCH[x.dtype],
                True)
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float16):
        raise ValueError(f"{name} must be a float32 or float16 array, got dtype {a.dtype} "
                         f"(convert with x.astype(np.float32))")
    return np.ascontiguousarray(a.reshape(-1), dtype=np.float32), str(a.dtype), False


def _check_args(blocksize: int, quant_type: str) -> None:
    validate.choice(quant_type, "quant_type (qtype)", QUANT_TYPES)
    validate.choice(blocksize, "blocksize (group_size)", BLOCKSIZES)


def _check_values(flat: np.ndarray) -> None:
    if flat.size == 0:
        raise ValueError("x is empty: expected at least 2 elements (an even count)")
    if flat.size % 2:
        raise ValueError(f"x must have an even number of elements (two 4-bit codes per byte), "
                         f"got {flat.size} (pad with one zero)")
    if not np.isfinite(flat).all():
        bad = int((~np.isfinite(flat)).sum())
        raise ValueError(f"x must be finite, got {bad} NaN/Inf value(s) (clean or clip the "
                         f"tensor before quantizing)")


def _check_backend(backend: str) -> None:
    validate.choice(backend, "backend", ("numba", "numpy"))


# ---------------------------------------------------------------------------------------------
# Reference (numpy)
# ---------------------------------------------------------------------------------------------

def _scale_ref(flat: np.ndarray, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block absmax (n_blocks,) and scaled values s in [-1, 1] (n,), both float32."""
    n = flat.size
    full = n - n % blocksize
    blocks = flat[:full].reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=1) if full else np.zeros(0, np.float32)
    recip = np.float32(1) / np.maximum(absmax, ABSMAX_FLOOR)          # reciprocal ...
    s = np.clip(blocks * recip[:, None], -1, 1).reshape(-1)            # ... then multiply
    if full < n:                                                       # short last block:
        am = np.maximum(np.abs(flat[full:]).max(), ABSMAX_FLOOR)       # stored clamped,
        absmax = np.append(absmax, am).astype(np.float32)
        s = np.concatenate([s, np.clip(flat[full:] / am, -1, 1)])      # and divided
    return absmax.astype(np.float32), s.astype(np.float32)


def _quantize_ref(flat, blocksize, quant_type):
    _, _, mid, order = _tables(quant_type)
    absmax, s = _scale_ref(flat, blocksize)
    q = order[np.searchsorted(mid, s, side="left")]   # count of midpoints strictly below s
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    return packed, absmax


def _nested_quantize_ref(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-bit blockwise (256) quantization of a (m,) float32 with the CPU lookup table."""
    m = a.size
    nb = -(-m // NESTED_BLOCKSIZE)
    pad = np.zeros(nb * NESTED_BLOCKSIZE, np.float32)
    pad[:m] = a
    blocks = pad.reshape(nb, NESTED_BLOCKSIZE)
    nabs = np.abs(blocks).max(axis=1).astype(np.float32)
    safe = np.where(nabs == 0, np.float32(1), nabs)   # all-zero blocks are overwritten below
    recip = np.float32(1) / safe
    s = np.clip(blocks * recip[:, None], -1, 1)
    idx = (((s + np.float32(1)) * np.float32(0.5)) * np.float32(LUT_BINS - 1)
           + np.float32(0.5)).astype(np.uint16)
    codes = _DYNAMIC_LUT[idx]
    codes[nabs == 0] = 0                          # an all-zero nested block stores code 0
    return codes.reshape(-1)[:m].astype(np.uint8), nabs


def _absmax_dequant_ref(codes, nested_absmax, offset, nested_code, nested_blocksize):
    scale = np.repeat(nested_absmax, nested_blocksize)[:codes.size]
    return (nested_code[codes] * scale + np.float32(offset)).astype(np.float32)  # mul, then add


def _dequantize_ref(packed, absmax, blocksize, n, deq_code):
    q = np.empty(packed.size * 2, np.uint8)
    q[0::2], q[1::2] = packed >> 4, packed & 15
    scale = np.repeat(absmax, blocksize)[:n]
    return (deq_code[q[:n]] * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------------

#: Blocks handled by one parallel task: large enough to amortize scheduling, small enough to
#: balance two to sixteen threads on a 4096x4096 matrix (65536 blocks of 256).
_BLOCKS_PER_TASK = 256


@numba.njit(cache=True, parallel=True)
def _quantize_nb(flat, blocksize, mid, order, packed, absmax):
    """flat (n,) f32 -> packed (n/2,) u8 and absmax (n_blocks,) f32, in place.

    Same arithmetic as the reference. The bucket index is a branch-free count of the 15
    midpoints strictly below s, written out so LLVM vectorizes it across elements.
    """
    n = flat.size
    nb = absmax.size
    one = np.float32(1.0)
    m0, m1, m2, m3, m4 = mid[0], mid[1], mid[2], mid[3], mid[4]
    m5, m6, m7, m8, m9 = mid[5], mid[6], mid[7], mid[8], mid[9]
    m10, m11, m12, m13, m14 = mid[10], mid[11], mid[12], mid[13], mid[14]
    n_tasks = (nb + _BLOCKS_PER_TASK - 1) // _BLOCKS_PER_TASK
    for t in numba.prange(n_tasks):
        q = np.empty(blocksize, np.uint8)            # sorted-bucket index of each element
        for b in range(t * _BLOCKS_PER_TASK, min(nb, (t + 1) * _BLOCKS_PER_TASK)):
            start = b * blocksize
            stop = min(start + blocksize, n)
            am = np.float32(0.0)
            for i in range(start, stop):
                am = max(am, abs(flat[i]))
            amc = max(am, ABSMAX_FLOOR)
            short = stop - start < blocksize
            absmax[b] = amc if short else am         # a short last block stores it clamped
            recip = one / amc
            for i in range(start, stop):
                if short:
                    s = flat[i] / amc                # short last block: divide
                else:
                    s = flat[i] * recip              # full block: reciprocal, then multiply
                s = min(max(s, -one), one)
                q[i - start] = ((s > m0) + (s > m1) + (s > m2) + (s > m3) + (s > m4)
                                + (s > m5) + (s > m6) + (s > m7) + (s > m8) + (s > m9)
                                + (s > m10) + (s > m11) + (s > m12) + (s > m13) + (s > m14))
            h = start // 2
            for k in range((stop - start) // 2):
                packed[h + k] = (order[q[2 * k]] << 4) | order[q[2 * k + 1]]


@numba.njit(cache=True)
def _nested_quantize_nb(a, lut, codes, nabs):
    m = a.size
    bs = 256
    one = np.float32(1.0)
    for b in range(nabs.size):
        start = b * bs
        stop = min(start + bs, m)
        mx = np.float32(0.0)
        for i in range(start, stop):
            mx = max(mx, abs(a[i]))
        nabs[b] = mx
        if mx == 0:
            for i in range(start, stop):
                codes[i] = 0
            continue
        recip = one / mx
        for i in range(start, stop):
            s = min(max(a[i] * recip, -one), one)
            idx = np.uint16(((s + one) * np.float32(0.5)) * np.float32(65535.0) + np.float32(0.5))
            codes[i] = lut[idx]


@numba.njit(cache=True)
def _absmax_dequant_nb(codes, nabs, offset, ncode, nbs, out):
    for i in range(codes.size):
        t = ncode[codes[i]] * nabs[i // nbs]
        out[i] = t + offset


@numba.njit(cache=True, parallel=True)
def _dequantize_nb(packed, absmax, blocksize, n, deq, out):
    """packed (n/2,) u8, absmax (n_blocks,) f32 -> out (n,) f32 in place: deq[nibble] * absmax."""
    half = blocksize // 2
    nb = absmax.size
    n_tasks = (nb + _BLOCKS_PER_TASK - 1) // _BLOCKS_PER_TASK
    for t in numba.prange(n_tasks):
        for b in range(t * _BLOCKS_PER_TASK, min(nb, (t + 1) * _BLOCKS_PER_TASK)):
            a = absmax[b]
            for k in range(b * half, min((b + 1) * half, n // 2)):
                byte = packed[k]
                out[2 * k] = deq[byte >> 4] * a          # high nibble: even element
                out[2 * k + 1] = deq[byte & 15] * a      # low nibble: odd element


#: Below this many elements a parallel launch costs more than it saves (and on a busy machine
#: much more): small tensors, e.g. a LoRA base layer dequantized every forward, run serially.
_PARALLEL_MIN = 1 << 18
_quantize_serial = numba.njit(cache=True)(_quantize_nb.py_func)
_dequantize_serial = numba.njit(cache=True)(_dequantize_nb.py_func)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _double_quantize(absmax: np.ndarray, backend: str):
    # torch's float32 mean, as bitsandbytes computes it (it can differ from the float64 mean
    # rounded to float32 by one ulp)
    offset = np.float32(torch.from_numpy(absmax).mean().item())
    a = (absmax - offset).astype(np.float32)
    if backend == "numpy":
        codes, nabs = _nested_quantize_ref(a)
    else:
        codes = np.empty(a.size, np.uint8)
        nabs = np.empty(-(-a.size // NESTED_BLOCKSIZE), np.float32)
        _nested_quantize_nb(a, _DYNAMIC_LUT, codes, nabs)
    return codes, nabs, offset


@validate.also_accepts(group_size="blocksize", qtype="quant_type")
def quantize_4bit(x, blocksize: int = 64, quant_type: str = "nf4",
                  compress_statistics: bool = False, *, backend: str = "numba"):
    """Quantize a float tensor to bitsandbytes' 4-bit NF4/FP4 block format (CPU-exact).

    Args:
        x: float32 (or float16/bfloat16) numpy array or torch tensor, any shape, with an even
            number of elements n. Blocks are taken over the row-major flattening.
        blocksize: values per absmax block, one of BLOCKSIZES.
        quant_type: "nf4" or "fp4".
        compress_statistics: double quantization of the absmax constants (8-bit dynamic codes,
            one float32 scale per 256 blocks, minus their mean).
        backend: "numba" (parallel kernels) or "numpy" (readable reference); bit-identical.

    Returns:
        packed: (n // 2,) uint8 (numpy if x was numpy, torch if x was torch), element 2k in the
            high nibble of byte k;
        state: :class:`QuantState`.
    """
    _check_args(blocksize, quant_type)
    _check_backend(backend)
    compress_statistics = validate.flag(compress_statistics, "compress_statistics")
    flat, dtype, is_torch = _as_f32(x)
    _check_values(flat)
    shape = tuple(x.shape)
    if backend == "numpy":
        packed, absmax = _quantize_ref(flat, blocksize, quant_type)
    else:
        _, _, mid, order = _tables(quant_type)
        packed = np.empty(flat.size // 2, np.uint8)
        absmax = np.empty(-(-flat.size // blocksize), np.float32)
        kernel = _quantize_nb if flat.size >= _PARALLEL_MIN else _quantize_serial
        kernel(flat, blocksize, mid, order, packed, absmax)
    if compress_statistics:
        codes, nabs, offset = _double_quantize(absmax, backend)
        state = QuantState(codes, nabs, offset, blocksize, quant_type, shape, dtype)
    else:
        state = QuantState(absmax, None, None, blocksize, quant_type, shape, dtype)
    return (torch.from_numpy(packed) if is_torch else packed), state


def dequantize_4bit(packed, state: QuantState, *, backend: str = "numba", out=None):
    """Inverse of :func:`quantize_4bit`: ``code[nibble] * absmax_block`` in float32.

    Args:
        packed: (n // 2,) uint8 numpy array or torch tensor (any shape with n // 2 elements,
            e.g. bitsandbytes' (n // 2, 1)).
        state: the :class:`QuantState` from quantization.
        out: optional C-contiguous float32 numpy array with ``n`` elements to write into (numba
            backend). Reusing one buffer skips the page faults of a fresh allocation, which on a
            4096x4096 matrix cost more than the dequantization itself.

    Returns:
        float32 array of ``state.shape``; torch tensor when ``packed`` is a torch tensor.
    """
    _check_backend(backend)
    if not isinstance(state, QuantState):
        raise ValueError(f"state must be a qlearn.nf4.QuantState, got {type(state).__name__}")
    state.check()
    is_torch = isinstance(packed, torch.Tensor)
    p = packed.detach().cpu().reshape(-1).numpy() if is_torch else np.asarray(packed).reshape(-1)
    if p.dtype != np.uint8:
        raise ValueError(f"packed must be uint8, got {p.dtype} (pass the array quantize_4bit "
                         f"returned)")
    n = math.prod(state.shape)
    if p.size * 2 != n:
        raise ValueError(f"packed must have {n // 2} bytes (n/2) for state.shape {state.shape}, "
                         f"got {p.size}: packed data and state do not belong together")
    nblocks = -(-n // state.blocksize)
    if state.absmax.size != nblocks:
        raise ValueError(f"state.absmax has {state.absmax.size} entries, expected {nblocks} "
                         f"for {n} values in blocks of {state.blocksize}")
    deq = _tables(state.quant_type)[1]
    if backend == "numpy":
        if out is not None:
            raise ValueError("out= is supported by the numba backend only, got backend='numpy'")
        absmax = state.absmax_dequant()
        y = _dequantize_ref(p, absmax, state.blocksize, n, deq)
    else:
        if state.nested:
            absmax = np.empty(state.absmax.size, np.float32)
            _absmax_dequant_nb(state.absmax, state.nested_absmax, np.float32(state.offset),
                               state.nested_code, state.nested_blocksize, absmax)
        else:
            absmax = np.ascontiguousarray(state.absmax, dtype=np.float32)
        if out is None:
            y = np.empty(n, np.float32)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.size != n
              or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous float32 numpy array of {n} elements, got "
                             f"{type(out).__name__} {getattr(out, 'dtype', '')} "
                             f"size {getattr(out, 'size', '?')}")
        else:
            y = out.reshape(-1)
        kernel = _dequantize_nb if n >= _PARALLEL_MIN else _dequantize_serial
        kernel(np.ascontiguousarray(p), absmax, state.blocksize, n, deq, y)
    y = y.reshape(state.shape)
    return torch.from_numpy(y) if is_torch else y


@validate.also_accepts(group_size="blocksize", qtype="quant_type")
def fake_quantize_4bit(x, blocksize: int = 64, quant_type: str = "nf4",
                       compress_statistics: bool = False):
    """Quantize then dequantize: the 4-bit approximation of x, same kind and shape, float32.

    ``quant_type`` may also be "int4" (bitsandbytes' symmetric integer code book, absmax
    scaling, nearest level), for comparisons on the same block structure.
    """
    if quant_type != "int4":
        packed, state = quantize_4bit(x, blocksize, quant_type, compress_statistics)
        return dequantize_4bit(packed, state)
    _check_args(blocksize, "nf4")
    flat, _, is_torch = _as_f32(x)
    _check_values(flat)
    absmax, s = _scale_ref(flat, blocksize)
    if compress_statistics:  # same nested 8-bit treatment of the absmax constants
        codes, nabs, offset = _double_quantize(absmax, "numpy")
        absmax = _absmax_dequant_ref(codes, nabs, offset, _DYNAMIC, NESTED_BLOCKSIZE)
    _, deq, mid, order = _tables("int4")
    q = order[np.searchsorted(mid, s, side="left")]
    y = _dequantize_ref(((q[0::2] << 4) | q[1::2]).astype(np.uint8), absmax, blocksize,
                        flat.size, deq).reshape(tuple(x.shape))
    return torch.from_numpy(y) if is_torch else y


@validate.also_accepts(group_size="blocksize")
def bits_per_weight(blocksize: int = 64, compress_statistics: bool = False,
                    nested_blocksize: int = NESTED_BLOCKSIZE) -> float:
    """Storage cost per parameter: 4 bits plus the amortized block constants.

    Without double quantization each block adds one float32 absmax (32 / blocksize bits); with
    it, one 8-bit code per block plus a float32 scale per ``nested_blocksize`` blocks
    (the single float32 offset per tensor is negligible and not counted).
    """
    from qlearn import blocktypes

    _check_args(blocksize, "nf4")
    return blocktypes.nf4_type(blocksize, bool(compress_statistics),
                               nested_blocksize).bits_per_weight


# ---------------------------------------------------------------------------------------------
# nn.Module
# ---------------------------------------------------------------------------------------------

class Linear4bit(torch.nn.Module):
    """A frozen linear layer whose weight is stored in NF4/FP4 and dequantized on every forward.

    Holds ``packed`` ((out*in/2,) uint8 buffer), the :class:`QuantState` and an optional float32
    bias. ``forward(x)``: x (..., in_features) float32 -> (..., out_features) float32. The weight
    gets no gradient; inputs do, so LoRA adapters on top (``qlearn.lora``) can be trained.
    Swapping it into a model is the adapters' job (``qlearn.adapters.replace_linears``).
    """

    def __init__(self, packed: torch.Tensor, state: QuantState, bias: torch.Tensor | None = None):
        super().__init__()
        out_features, in_features = state.shape
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("packed", packed)
        self.state = state
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(),
                                                                 requires_grad=False)

    @classmethod
    @validate.also_accepts(group_size="blocksize", qtype="quant_type")
    def from_linear(cls, linear: torch.nn.Linear, blocksize: int = 64, quant_type: str = "nf4",
                    compress_statistics: bool = False) -> "Linear4bit":
        """Quantize ``linear.weight`` (out_features, in_features) float32."""
        packed, state = quantize_4bit(linear.weight.detach().float(), blocksize, quant_type,
                                      compress_statistics)
        return cls(packed, state, linear.bias)

    def weight(self) -> torch.Tensor:
        """The dequantized weight, (out_features, in_features) float32."""
        return dequantize_4bit(self.packed, self.state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight(), self.bias)

    def storage_bytes(self) -> int:
        """Bytes of the quantized weight: packed nibbles + block statistics (+ bias)."""
        s = self.state
        n = self.packed.numel() + s.absmax.nbytes
        if s.nested:
            n += s.nested_absmax.nbytes + 4  # + the float32 offset
        return n + (0 if self.bias is None else self.bias.numel() * 4)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"quant_type={self.state.quant_type}, blocksize={self.state.blocksize}, "
                f"double_quant={self.state.nested}")
