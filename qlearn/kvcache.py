"""Quantized KV caches inside a qlearn Llama model's attention.

``with_kv_cache(model, k_type, v_type, **options)`` returns a copy of a qlearn
:class:`~qlearn.models.llama.LlamaModel` (sharing its weights) whose attention layers write their
keys (after the rotary) and values into a store in the chosen formats and read them back,
dequantized, for the attention product: in a full-sequence forward (as llama.cpp's batched prefill
does: a batch's own K/V are written to the cache and read from it) and in incremental decoding
(``model(tokens, cache=model.new_cache())``). ``model(tokens)`` still returns logits, so every
perplexity tool works unchanged.

Formats (``FORMATS``), each stored as real arrays whose bytes :meth:`QuantizedLayerCache.nbytes`
counts and :func:`cache_bytes` predicts:

* ``f32``, ``f16``, ``bf16``: plain floats (4, 2, 2 bytes per element).
* ``fp8_e4m3``, ``fp8_e5m2``: one byte per element, through :mod:`qlearn.formats`.
* ``int8``, ``int4``, ``int2``: a uniform grid (:mod:`qlearn.uniform`), codes packed
  ``8 // bits`` to a byte, an fp16 scale per group (and a uint8 zero point when asymmetric).
  ``axis="token"``: each token's head vector is cut into groups of ``group`` channels (default the
  whole head); ``axis="channel"``: each channel gets one scale per ``group`` consecutive tokens
  (default 32), so a group is quantized only once its ``group`` tokens have arrived; the
  tokens still waiting are kept in fp16.
* ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``iq4_nl``: llama.cpp's cache types, 32-wide
  blocks along the head dimension, bytes identical with ggml's ``quantize_row_<t>_ref`` (what
  llama.cpp's CPU backend writes into its cache) through :mod:`qlearn.kquants`.

KIVI (Liu et al. 2024): keys per channel and values per token, with the most recent ``residual``
tokens in fp16: :func:`kivi`, or ``k_axis="channel", v_axis="token", residual=R`` by hand.

Two details reproduce llama.cpp's cache exactly:

* Channel order (``k_order``). GGUF files store Q/K rows permuted so that rotary pairs are
  adjacent, (2i, 2i+1); qlearn's SmolLM2 un-permutes them into the half-split order (i, i + d/2).
  llama.cpp's 32-wide K blocks therefore hold channels 0..15 and 32..47 of qlearn's head, not
  0..31. ``k_order="llama.cpp"`` (default) quantizes K in llama.cpp's order; ``"model"`` in the
  model's own order.
* Hadamard rotation (``rotate``). This llama.cpp version multiplies each head's Q and K (per
  64-channel block, the largest power of two >= 64 dividing the head) by the orthonormal
  Sylvester-Hadamard matrix H before a quantized K cache, and V (64-blocks) before a quantized V
  cache, undoing it on the attention output. H is symmetric and H H = I, so
  (qH)(kH)^T = q k^T: exact in real arithmetic, but the cache now quantizes kH, whose outliers are
  spread over all channels of the block. ``rotate=True`` (default, as llama.cpp) applies it to
  every type except f32/f16/bf16 when the head dimension is a multiple of 64 (llama.cpp's
  condition); here the cache stores kH and gives back dequant(kH) H, the same attention scores.
  ``LLAMA_ATTN_ROT_DISABLE=1`` is llama.cpp's ``rotate=False``.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch

from . import formats, kquants, uniform, validate
from .models.llama import Attention, LayerCache, LlamaModel

__all__ = ["FORMATS", "GGML_TYPES", "FLOAT_TYPES", "INT_TYPES", "FP8_TYPES", "CacheFormat",
           "QuantizedLayerCache", "with_kv_cache", "kivi", "hadamard", "encode", "decode",
           "bytes_per_token", "cache_bytes", "cache_format"]

FLOAT_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
FP8_TYPES = ("fp8_e4m3", "fp8_e5m2")
INT_TYPES = {"int8": 8, "int4": 4, "int2": 2}
GGML_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1",
              "iq4_nl": "IQ4_NL"}
FORMATS = (*FLOAT_TYPES, *FP8_TYPES, *INT_TYPES, *GGML_TYPES)
AXES = ("token", "channel")
K_ORDERS = ("llama.cpp", "model")
DEFAULT_CHANNEL_GROUP = 32     # tokens per scale for axis="channel" (KIVI's group size)
ROT_MIN = 64                   # llama.cpp rotates in blocks of 64 (K: the largest power of 2 dividing hd)
SCALE_BYTES = 2                # fp16 scale per group
ZERO_BYTES = 1                 # uint8 zero point per group (asymmetric)
TAIL_BYTES = 2                 # fp16 for tokens kept in full precision (residual window)
FP16_MAX = float(np.finfo(np.float16).max)


# --------------------------------------------------------------------------- one tensor's format
@dataclasses.dataclass(frozen=True)
class CacheFormat:
    """How one of K or V is stored.

    type: a name in FORMATS; axis, group, symmetric: integer types only (see module docstring);
    residual: most recent tokens kept in fp16 (>= 0); rotate: multiply by a Hadamard matrix in
    blocks of ``rot`` channels before storing (0: no rotation).
    """

    type: str
    axis: str = "token"
    group: int | None = None
    symmetric: bool = True
    residual: int = 0
    rot: int = 0

    @property
    def is_float(self) -> bool:
        return self.type in FLOAT_TYPES

    def chunk(self) -> int:
        """Tokens quantized together: ``group`` for per-channel integer grids, else 1."""
        return self.group if self.type in INT_TYPES and self.axis == "channel" else 1

    def chunk_bytes(self, head_dim: int) -> int:
        """Bytes of one chunk (``chunk()`` tokens) of one head."""
        t = self.type
        if t in FLOAT_TYPES:
            return head_dim * torch.finfo(FLOAT_TYPES[t]).bits // 8
        if t in FP8_TYPES:
            return head_dim
        if t in GGML_TYPES:
            q = kquants.QTYPES[GGML_TYPES[t]]
            return head_dim // q.block_size * q.type_size
        bits = INT_TYPES[t]
        per_group = SCALE_BYTES + (0 if self.symmetric else ZERO_BYTES)
        if self.axis == "token":
            return head_dim * bits // 8 + head_dim // self.group * per_group
        return self.group * head_dim * bits // 8 + head_dim * per_group


def cache_format(type: str, head_dim: int, axis: str = "token", group: int | None = None,
                 symmetric: bool = True, residual: int = 0, rotate: bool = True,
                 rot: int | None = None) -> CacheFormat:
    """Validated :class:`CacheFormat` for a head of ``head_dim`` channels.

    rot: rotation block (None: llama.cpp's rule for K, the largest power of two >= 64 dividing
    head_dim; V uses 64); applied only when ``rotate`` and the type is not f32/f16/bf16.
    """
    if type not in FORMATS:
        raise ValueError(f"unknown KV cache type {type!r}; expected one of {FORMATS}")
    validate.integer(head_dim, "head_dim", lo=1)
    validate.flag(symmetric, "symmetric")
    validate.flag(rotate, "rotate")
    validate.optional_integer(rot, "rot", lo=1)
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if isinstance(residual, bool) or not isinstance(residual, (int, np.integer)) or residual < 0:
        raise ValueError(f"residual (tokens kept in full precision) must be an integer >= 0, "
                         f"got {residual!r}")
    if type in GGML_TYPES:
        bs = kquants.QTYPES[GGML_TYPES[type]].block_size
        if head_dim % bs:
            raise ValueError(f"{type} stores blocks of {bs} along the head dimension: head_dim "
                             f"must be a multiple of {bs}, got {head_dim}")
    if type in INT_TYPES:
        bits = INT_TYPES[type]
        if group is None:
            group = head_dim if axis == "token" else DEFAULT_CHANNEL_GROUP
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
            raise ValueError(f"group must be a positive integer, got {group!r}")
        if axis == "token" and head_dim % group:
            raise ValueError(f"group {group} (channels per scale) must divide head_dim {head_dim}")
        if (group * (head_dim if axis == "channel" else 1) * bits) % 8:
            raise ValueError(f"a group of {group} {bits}-bit codes does not fill whole bytes")
        group = int(group)
    else:
        group, axis, symmetric = None, "token", True
    r = 0
    if rotate and type not in FLOAT_TYPES and head_dim % ROT_MIN == 0:
        r = rot or ROT_MIN
        if rot is None:
            while head_dim % (2 * r) == 0:
                r *= 2
    return CacheFormat(type, axis, group, bool(symmetric), int(residual), r)


# --------------------------------------------------------------------------- codes <-> values
def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (..., n) uint8 < 2**bits -> (..., n * bits // 8) uint8, low bits first."""
    per = 8 // bits
    c = codes.reshape(*codes.shape[:-1], -1, per).astype(np.uint8)
    out = np.zeros(c.shape[:-1], np.uint8)
    for i in range(per):
        out |= c[..., i] << np.uint8(i * bits)
    return out


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack`: (..., m) uint8 -> (..., m * 8 // bits) uint8."""
    per = 8 // bits
    mask = np.uint8(2 ** bits - 1)
    parts = [(packed >> np.uint8(i * bits)) & mask for i in range(per)]
    return np.stack(parts, -1).reshape(*packed.shape[:-1], -1)


def _check_format(fmt) -> None:
    if not isinstance(fmt, CacheFormat):
        raise TypeError(f"fmt must be a CacheFormat (from cache_format(...)), got "
                        f"{type(fmt).__name__}")


def _check_sizes(**sizes) -> None:
    for name, v in sizes.items():
        validate.integer(v, name, lo=0 if name == "length" else 1)


def _int_block(fmt: CacheFormat, shape) -> tuple[int, ...]:
    return (1, 1, 1, fmt.group) if fmt.axis == "token" else (1, 1, fmt.group, 1)


def encode(x: torch.Tensor, fmt: CacheFormat) -> dict:
    """Store x: (batch, heads, n, head_dim) float32 (n a multiple of ``fmt.chunk()``).

    Returns a dict of arrays whose axis 2 runs over tokens (or token groups); their bytes are
    the storage. The readable reference for every type; :func:`decode` inverts it.
    """
    _check_format(fmt)
    x = validate.float_tensor(x, "x", ndim=4, shape_doc="(batch, heads, n, head_dim)",
                              allow_empty=True)
    t = fmt.type
    if t in FLOAT_TYPES:
        return {"x": x.to(FLOAT_TYPES[t])}
    a = x.detach().float().cpu().numpy()
    if t in FP8_TYPES:
        return {"codes": formats.encode(a, t)}
    if t in GGML_TYPES:
        b, h, n, d = a.shape
        q = kquants.quantize_ref(a.reshape(-1, d), GGML_TYPES[t])
        return {"blocks": q.reshape(b, h, n, -1)}
    bits = INT_TYPES[t]
    block = _int_block(fmt, a.shape)
    first = uniform.quantize(a, bits, fmt.symmetric, block)
    # the stored scale is fp16: round it, then quantize on that grid
    scale16 = np.clip(first.scale, 0, FP16_MAX).astype(np.float16)
    scale16[scale16 == 0] = np.float16(uniform.ALL_ZERO_SCALE)
    q = uniform.quantize_affine(a, scale16.astype(np.float32), first.zero_point, bits,
                                fmt.symmetric, block)
    offset = 2 ** (bits - 1) if fmt.symmetric else 0
    out = {"codes": _pack((q.codes.astype(np.int16) + offset).astype(np.uint8), bits),
           "scale": scale16}
    if not fmt.symmetric:
        out["zero"] = q.zero_point.astype(np.uint8)
    return out


def decode(stored: dict, fmt: CacheFormat, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`encode`: (batch, heads, n, head_dim) float32."""
    _check_format(fmt)
    validate.integer(head_dim, "head_dim", lo=1)
    t = fmt.type
    need = ("x",) if t in FLOAT_TYPES else ("codes",) if t in FP8_TYPES else \
        ("blocks",) if t in GGML_TYPES else ("codes", "scale") + (() if fmt.symmetric else ("zero",))
    if not isinstance(stored, dict) or any(k not in stored for k in need):
        raise ValueError(f"stored must be the dict encode() returned for {t}, with keys {need}, "
                         f"got {sorted(stored) if isinstance(stored, dict) else type(stored).__name__}")
    if t in INT_TYPES:
        n_codes = stored["codes"].shape[-1] * 8 // INT_TYPES[t]
        want = head_dim
        if stored["codes"].ndim != 4 or n_codes != want:
            raise ValueError(f"stored codes must hold {want} {INT_TYPES[t]}-bit codes per row "
                             f"(head_dim {head_dim}), got shape {tuple(stored['codes'].shape)}")
    if t in FLOAT_TYPES:
        return stored["x"].float()
    if t in FP8_TYPES:
        return torch.from_numpy(formats.decode(stored["codes"], t))
    if t in GGML_TYPES:
        q = stored["blocks"]
        b, h, n, _ = q.shape
        x = kquants.dequantize(q.reshape(b * h * n, -1), GGML_TYPES[t])
        return torch.from_numpy(x.reshape(b, h, n, head_dim))
    bits = INT_TYPES[t]
    codes = _unpack(stored["codes"], bits).astype(np.int16)
    if fmt.symmetric:
        codes -= 2 ** (bits - 1)
        zero = np.zeros(stored["scale"].shape, np.int32)
    else:
        zero = stored["zero"].astype(np.int32)
    q = uniform.QTensor(codes.astype(np.int8 if fmt.symmetric else np.uint8),
                        stored["scale"].astype(np.float32), zero, bits, fmt.symmetric,
                        _int_block(fmt, codes.shape), codes.shape)
    return torch.from_numpy(uniform.dequantize(q))


def _nbytes(stored: dict) -> int:
    return sum(v.numel() * v.element_size() if isinstance(v, torch.Tensor) else v.nbytes
               for v in stored.values())


def _cat(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: torch.cat([a[k], b[k]], 2) if isinstance(b[k], torch.Tensor)
            else np.concatenate([a[k], b[k]], 2) for k in b}


# --------------------------------------------------------------------------- rotation / order
def hadamard(n: int) -> torch.Tensor:
    """Orthonormal Sylvester-Hadamard matrix (n, n) float32, n a power of two: H = H^T, H H = I.

    Built as llama.cpp builds it: H_1 = [1/sqrt(n)], H_2s = [[H_s, H_s], [H_s, -H_s]].
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n & (n - 1):
        raise ValueError(f"n must be a positive power of two, got {n!r}")
    h = torch.full((1, 1), 1.0 / math.sqrt(n), dtype=torch.float32)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _rotate(x: torch.Tensor, n: int) -> torch.Tensor:
    """x (..., d) -> each block of n channels times H_n (its own inverse)."""
    if not n:
        return x
    d = x.shape[-1]
    return (x.reshape(*x.shape[:-1], d // n, n) @ hadamard(n)).reshape(x.shape)


def _interleave_order(head_dim: int) -> torch.Tensor:
    """Index p with x_gguf = x_half[..., p]: GGUF position 2i+j holds half-split channel j*d/2+i."""
    half = head_dim // 2
    return torch.arange(head_dim).view(2, half).T.reshape(-1)


# --------------------------------------------------------------------------- one tensor's stream
class _Stream:
    """K or V of one layer: committed chunks in ``fmt`` plus a fp16 tail (residual window and an
    incomplete token group). Tokens are in the stored basis (permuted and rotated)."""

    def __init__(self, fmt: CacheFormat, head_dim: int):
        self.fmt, self.head_dim = fmt, head_dim
        self.stored: dict | None = None
        self.n_stored = 0
        self.tail: torch.Tensor | None = None

    def append(self, x: torch.Tensor) -> None:
        """Add (batch, heads, t, head_dim) float32 tokens; commit what leaves the window."""
        f = self.fmt
        if f.type == "f32" and not f.residual:
            self.stored = _cat(self.stored, {"x": x})
            self.n_stored += x.shape[2]
            return
        tail = x if self.tail is None else torch.cat([self.tail.float(), x], 2)
        n_commit = max(tail.shape[2] - f.residual, 0) // f.chunk() * f.chunk()
        if n_commit:
            self.stored = _cat(self.stored, encode(tail[:, :, :n_commit].contiguous(), f))
            self.n_stored += n_commit
        self.tail = tail[:, :, n_commit:].to(torch.float16)

    def read(self) -> torch.Tensor:
        """All tokens, dequantized: (batch, heads, length, head_dim) float32."""
        parts = []
        if self.stored is not None:
            parts.append(decode(self.stored, self.fmt, self.head_dim))
        if self.tail is not None and self.tail.shape[2]:
            parts.append(self.tail.float())
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    def nbytes(self) -> int:
        n = 0 if self.stored is None else _nbytes(self.stored)
        return n + (0 if self.tail is None else self.tail.numel() * TAIL_BYTES)


class QuantizedLayerCache(LayerCache):
    """One attention layer's K and V in :class:`CacheFormat` s (see the module docstring).

    ``update(k, v)`` takes float32 (batch, n_kv_heads, t, head_dim) keys (after the rotary) and
    values, stores them and returns everything cached, dequantized, in the model's basis.
    """

    def __init__(self, k_fmt: CacheFormat, v_fmt: CacheFormat, head_dim: int,
                 k_perm: torch.Tensor | None = None):
        super().__init__()
        self.k_fmt, self.v_fmt, self.head_dim = k_fmt, v_fmt, head_dim
        self.k_perm = k_perm
        self.k_inv = None if k_perm is None else torch.argsort(k_perm)
        self.ks, self.vs = _Stream(k_fmt, head_dim), _Stream(v_fmt, head_dim)
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k_perm is not None:
            k = k[..., self.k_perm]
        self.ks.append(_rotate(k.float(), self.k_fmt.rot))
        self.vs.append(_rotate(v.float(), self.v_fmt.rot))
        self._length += k.shape[2]
        k_all = _rotate(self.ks.read(), self.k_fmt.rot)
        if self.k_inv is not None:
            k_all = k_all[..., self.k_inv]
        return k_all, _rotate(self.vs.read(), self.v_fmt.rot)

    def nbytes(self) -> int:
        return self.ks.nbytes() + self.vs.nbytes()


class _Factory:
    """Picklable, deep-copyable ``cache_factory`` for one attention layer."""

    def __init__(self, k_fmt, v_fmt, head_dim, k_perm):
        self.k_fmt, self.v_fmt, self.head_dim, self.k_perm = k_fmt, v_fmt, head_dim, k_perm

    def __call__(self) -> QuantizedLayerCache:
        return QuantizedLayerCache(self.k_fmt, self.v_fmt, self.head_dim, self.k_perm)


# --------------------------------------------------------------------------- public entry points
def _formats(k_type, v_type, head_dim, axis=None, k_axis="token", v_axis="token", group=None,
             k_group=None, v_group=None, symmetric=True, residual=0, rotate=True):
    if axis is not None:
        k_axis = v_axis = axis
    k = cache_format(k_type, head_dim, k_axis, k_group if k_group is not None else group,
                     symmetric, residual, rotate)
    v = cache_format(v_type, head_dim, v_axis, v_group if v_group is not None else group,
                     symmetric, residual, rotate, rot=ROT_MIN)
    return k, v


def with_kv_cache(model: LlamaModel, k_type: str = "f16", v_type: str = "f16", *,
                  rotate: bool = True, k_order: str = "llama.cpp", axis: str | None = None,
                  k_axis: str = "token", v_axis: str = "token", group: int | None = None,
                  k_group: int | None = None, v_group: int | None = None,
                  symmetric: bool = True, residual: int = 0) -> LlamaModel:
    """A copy of ``model`` (sharing its weights) whose attention stores K in ``k_type`` and V in
    ``v_type`` (names in :data:`FORMATS`), in full forwards and in incremental decoding.

    rotate: Hadamard rotation before a quantized cache, as llama.cpp does (module docstring).
    k_order: "llama.cpp" quantizes K in the GGUF's interleaved rotary order, "model" in the
        model's own channel order (the same for a model with rope_style "interleaved").
    axis / k_axis / v_axis: "token" or "channel" grouping of the integer types (axis sets both).
    group / k_group / v_group: channels (token axis) or tokens (channel axis) per scale.
    symmetric: integer grids symmetric (scale only) or asymmetric (scale and zero point).
    residual: the most recent tokens kept in fp16 (KIVI's R), >= 0.
    """
    if not isinstance(model, LlamaModel):
        raise TypeError(f"with_kv_cache expects a qlearn LlamaModel, got {type(model).__name__}")
    if k_order not in K_ORDERS:
        raise ValueError(f"k_order must be one of {K_ORDERS}, got {k_order!r}")
    cfg = model.config
    hd = cfg.head_dim
    k_fmt, v_fmt = _formats(k_type, v_type, hd, axis, k_axis, v_axis, group, k_group, v_group,
                            symmetric, residual, rotate)
    perm = _interleave_order(hd) if (k_order == "llama.cpp" and cfg.rope_style == "half") else None
    memo = {id(p): p for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    out = copy.deepcopy(model, memo)       # new modules, the same parameter tensors
    for layer in out.layers:
        layer.self_attn.cache_factory = _Factory(k_fmt, v_fmt, hd, perm)
    out.kv_formats = (k_fmt, v_fmt)
    return out


def kivi(model: LlamaModel, bits: int = 2, group: int = 32, residual: int = 128) -> LlamaModel:
    """KIVI (Liu et al. 2024): keys per channel and values per token, asymmetric ``bits``-bit
    grids in groups of ``group`` (tokens for K, channels for V), the last ``residual`` tokens in
    fp16, no rotation."""
    validate.module(model, decoder=True)
    validate.integer(group, "group", lo=1)
    t = {8: "int8", 4: "int4", 2: "int2"}.get(bits) if validate.integer(bits, "bits") else None
    if t is None:
        raise ValueError(f"bits must be 2, 4 or 8, got {bits!r}")
    return with_kv_cache(model, t, t, rotate=False, k_axis="channel", v_axis="token",
                         k_group=group, v_group=min(group, model.config.head_dim),
                         symmetric=False, residual=residual)


def bytes_per_token(k_type: str, v_type: str, n_layers: int, n_kv_heads: int, head_dim: int,
                    **options) -> float:
    """Steady-state cache bytes per token of context (every token committed), all layers:
    ``n_layers * n_kv_heads * (chunk_bytes(K) / chunk(K) + chunk_bytes(V) / chunk(V))``."""
    _check_sizes(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim)
    k, v = _formats(k_type, v_type, head_dim, **options)
    return n_layers * n_kv_heads * sum(f.chunk_bytes(head_dim) / f.chunk() for f in (k, v))


def cache_bytes(k_type: str, v_type: str, n_layers: int, n_kv_heads: int, head_dim: int,
                length: int, batch: int = 1, **options) -> int:
    """Exact bytes of a cache holding ``length`` tokens, whatever order they came in: per tensor,
    ``c = (length - residual) // chunk * chunk`` tokens committed (``c // chunk`` chunks of
    ``chunk_bytes``) and ``length - c`` tokens in fp16."""
    _check_sizes(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, length=length,
                 batch=batch)
    k, v = _formats(k_type, v_type, head_dim, **options)
    total = 0
    for f in (k, v):
        if f.type == "f32" and not f.residual:
            total += length * f.chunk_bytes(head_dim)
            continue
        c = max(length - f.residual, 0) // f.chunk() * f.chunk()
        total += c // f.chunk() * f.chunk_bytes(head_dim) + (length - c) * head_dim * TAIL_BYTES
    return n_layers * n_kv_heads * batch * total


# --------------------------------------------------------------------------- llama.cpp as a client
def llama_cpp_perplexity(gguf, text: str, k_type: str = "f16", v_type: str = "f16",
                         rotate: bool = True, n_ctx: int = 512, threads: int = 2) -> float:
    """``llama-perplexity -fa on -ctk K -ctv V -c n_ctx -b n_ctx`` on ``text``; its final PPL.

    The same protocol as :func:`qlearn.models.evaluate.llama_cpp_perplexity` (chunks of n_ctx
    tokens, second half scored). rotate=False sets ``LLAMA_ATTN_ROT_DISABLE=1``. Needs the tools
    of ``scripts/llama_cpp.sh`` (:func:`qlearn.llama_cpp.available`).
    """
    import os
    import re
    import subprocess
    import tempfile

    from . import llama_cpp

    for t in (k_type, v_type):
        if t not in ("f32", "f16", "bf16", *GGML_TYPES):
            raise ValueError(f"llama.cpp has no cache type {t!r}; expected f32, f16, bf16 or one "
                             f"of {tuple(GGML_TYPES)}")
    gguf = validate.gguf_file(gguf, "gguf")
    validate.text(text)
    validate.flag(rotate, "rotate")
    validate.integer(n_ctx, "n_ctx", lo=4)
    validate.integer(threads, "threads", lo=1)
    env = {**os.environ, "LLAMA_ATTN_ROT_DISABLE": "0" if rotate else "1"}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "text.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")            # llama-perplexity -f drops one trailing newline
        proc = subprocess.run(
            [str(llama_cpp.tool("llama-perplexity")), "-m", str(gguf), "-f", path,
             "-c", str(n_ctx), "-b", str(n_ctx), "-t", str(threads), "-fa", "on",
             "-ctk", k_type, "-ctv", v_type], capture_output=True, text=True, env=env,
            timeout=1800)
    out = proc.stdout + proc.stderr
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if proc.returncode or not m:
        tail = "\n".join(out.splitlines()[-15:])
        raise RuntimeError(f"llama-perplexity failed (exit {proc.returncode}):\n{tail}")
    return float(m.group(1))
