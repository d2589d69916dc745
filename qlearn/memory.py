"""How much memory a model needs: weights by storage format, the KV cache, and what fits a GPU.

Every number is computed from a description, never typed in:

* a storage format is a :class:`Layout`: how many weights one block holds and which fields
  (codes, scales, minimums, second-level scales...) it stores, each with a count and a bit
  width. Bits per weight (bpw) = total bits of the block / weights in it. Q4_K's 256-weight
  super-block, for example, holds two fp16 super-scales, 12 bytes of packed 6-bit scales and
  minimums and 128 bytes of 4-bit codes: 144 bytes = 4.5 bpw.
* a model is a :class:`ModelConfig` copied from its published ``config.json`` (hidden size,
  intermediate size, layers, heads, KV heads, vocabulary, tied embeddings); the parameter count
  is computed from it.

Units are explicit everywhere: functions return **bytes**; ``gb(n)`` divides by 1e9 (decimal
gigabytes, what disk and model-card sizes use) and ``gib(n)`` by 2**30 (binary gibibytes, what
``nvidia-smi``, PyTorch and GPU spec sheets mean by "GB"). Arguments that take a memory size
name their unit: ``gpu_memory_gib``, ``reserve_gib``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qlearn import blocktypes, validate

__all__ = ["Field", "Layout", "FORMATS", "bits_per_weight", "ModelConfig", "MODELS",
           "weight_memory_bytes", "kv_cache_bytes", "fits_on_gpu", "max_context_that_fits",
           "gb", "gib", "BYTES_PER_GB", "BYTES_PER_GIB"]

BYTES_PER_GB = 10 ** 9  # SI gigabyte: disk sizes, model cards
BYTES_PER_GIB = 2 ** 30  # binary gibibyte: GPU memory, nvidia-smi, torch.cuda
BITS_PER_BYTE = 8
FP32, FP16, INT8 = 32, 16, 8  # bit widths of the scalar types that appear in layouts
NF4_BLOCK = 64  # bitsandbytes' default 4-bit blocksize
NF4_DQ_BLOCK = 256  # bitsandbytes' double-quant blocksize (absmax values per second-level scale)


def gb(n_bytes: float) -> float:
    """Bytes -> decimal gigabytes (1 GB = 1e9 bytes)."""
    validate.number(n_bytes, "n_bytes", lo=0)
    return n_bytes / BYTES_PER_GB


def gib(n_bytes: float) -> float:
    """Bytes -> binary gibibytes (1 GiB = 2**30 bytes = 1.074e9 bytes)."""
    validate.number(n_bytes, "n_bytes", lo=0)
    return n_bytes / BYTES_PER_GIB


# --- storage formats ---------------------------------------------------------------------------

Field = blocktypes.Field  # count values of bits bits per block (what they are)


@dataclass(frozen=True)
class Layout:
    """A storage format: blocks of ``block`` weights, each block storing ``fields``."""

    name: str
    block: int
    fields: tuple[Field, ...]
    note: str = ""

    @property
    def bits_per_block(self) -> int:
        return sum(f.count * f.bits for f in self.fields)

    @property
    def bytes_per_block(self) -> float:
        return self.bits_per_block / BITS_PER_BYTE

    @property
    def bits_per_weight(self) -> float:
        return self.bits_per_block / self.block


def _plain(name: str, bits: int) -> Layout:
    return Layout(name, 1, (Field("value", 1, bits),), f"one {bits}-bit number per weight")


def _from_table(t: blocktypes.BlockType) -> Layout:
    """A :mod:`qlearn.blocktypes` entry as a Layout, its fields under their printed labels."""
    return Layout(t.name, t.block_size, tuple(Field(f.label, f.count, f.bits) for f in t.fields),
                  t.note)


def _int_per_group(bits: int, group: int, zero_bits: int | None) -> Layout:
    fields = [Field("codes", group, bits), Field("fp16 scale", 1, FP16)]
    if zero_bits:
        fields.append(Field("zero point", 1, zero_bits))
    zp = {None: "symmetric", FP16: "fp16 zero", bits: f"{bits}-bit zero"}[zero_bits]
    return Layout(f"INT{bits}-g{group} ({zp})", group, tuple(fields),
                  f"{bits}-bit codes, one fp16 scale per {group} weights" +
                  ("" if not zero_bits else f" and a {zp} point"))


_LAYOUTS = [
    _plain("FP32", FP32), _plain("FP16", FP16), _plain("BF16", FP16), _plain("FP8", INT8),
    Layout("INT8 (per-channel)", 1, (Field("codes", 1, INT8),),
           "int8 codes; one scale per row of thousands of weights is negligible"),
    Layout("INT4 (per-channel)", 1, (Field("codes", 1, 4),),
           "int4 codes; one scale per row of thousands of weights is negligible"),
    _int_per_group(8, 128, None), _int_per_group(4, 128, None), _int_per_group(4, 128, 4),
    _int_per_group(4, 128, FP16), _int_per_group(4, 32, None), _int_per_group(3, 128, 3),
    _int_per_group(2, 64, 2),
    # GGUF blocks (legacy, k-quants, IQ4) and bitsandbytes 4-bit: from qlearn.blocktypes
    *(_from_table(t) for t in blocktypes.GGUF_TYPES.values()),
    _from_table(blocktypes.nf4_type(NF4_BLOCK)),
    _from_table(blocktypes.nf4_type(NF4_BLOCK, True, NF4_DQ_BLOCK)),
]

FORMATS: dict[str, Layout] = {lay.name: lay for lay in _LAYOUTS}
"""Every storage format by name (e.g. ``FORMATS["Q4_K"].bits_per_weight``)."""


def _layout(fmt: str | Layout) -> Layout:
    if isinstance(fmt, Layout):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)} or a Layout")
    return FORMATS[fmt]


def bits_per_weight(fmt: str | Layout) -> float:
    """Bits per weight of a format, scales and other overhead included (e.g. 4.5 for Q4_K)."""
    return _layout(fmt).bits_per_weight


def weight_memory_bytes(n_params: float, fmt: str | Layout) -> float:
    """Bytes to store ``n_params`` weights in ``fmt`` (every weight in that format)."""
    if isinstance(n_params, bool) or not isinstance(n_params, (int, float, np.integer, np.floating)) \
            or not 0 < n_params < math.inf:
        raise ValueError(f"n_params must be a positive finite count, got {n_params!r}")
    return n_params * bits_per_weight(fmt) / BITS_PER_BYTE


# --- models ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """The fields of a Llama-style ``config.json`` that decide its size.

    ``hidden`` (d_model), ``intermediate`` (SwiGLU FFN width), ``layers``, ``heads`` (query
    heads), ``kv_heads`` (key/value heads: fewer than ``heads`` under grouped-query attention),
    ``vocab``, ``tied`` (lm_head shares the embedding matrix), ``max_context`` (tokens).
    """

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    max_context: int
    source: str = field(default="", compare=False)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameter counts by part: embeddings, attention, MLP, norms, lm_head."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        attn = d * d + 2 * d * kv + d * d  # q_proj, k_proj + v_proj (GQA: kv columns), o_proj
        mlp = 3 * d * self.intermediate  # gate_proj, up_proj, down_proj
        norms = 2 * d  # input_layernorm, post_attention_layernorm (RMSNorm: weight only)
        return {"embed_tokens": self.vocab * d, "attention": self.layers * attn,
                "mlp": self.layers * mlp, "norms": self.layers * norms + d,
                "lm_head": 0 if self.tied else self.vocab * d}

    @property
    def n_params(self) -> int:
        return sum(self.parameter_breakdown().values())

    def kv_cache_bytes(self, context: int, batch: int = 1, bytes_per_element: float = 2) -> float:
        """KV cache of this model (see :func:`kv_cache_bytes`)."""
        return kv_cache_bytes(self.layers, self.kv_heads, self.head_dim, context, batch,
                              bytes_per_element)


def _hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"


MODELS: dict[str, ModelConfig] = {m.name: m for m in [
    ModelConfig("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, False, 4096, _hf("meta-llama/Llama-2-7b-hf")),
    ModelConfig("Llama-2-13B", 5120, 13824, 40, 40, 40, 32000, False, 4096, _hf("meta-llama/Llama-2-13b-hf")),
    ModelConfig("Llama-2-70B", 8192, 28672, 80, 64, 8, 32000, False, 4096, _hf("meta-llama/Llama-2-70b-hf")),
    ModelConfig("Llama-3-8B", 4096, 14336, 32, 32, 8, 128256, False, 8192, _hf("meta-llama/Meta-Llama-3-8B")),
    ModelConfig("Llama-3-70B", 8192, 28672, 80, 64, 8, 128256, False, 8192, _hf("meta-llama/Meta-Llama-3-70B")),
    ModelConfig("Llama-3.1-405B", 16384, 53248, 126, 128, 8, 128256, False, 131072,
                _hf("meta-llama/Llama-3.1-405B")),
    ModelConfig("Mistral-7B", 4096, 14336, 32, 32, 8, 32000, False, 32768, _hf("mistralai/Mistral-7B-v0.1")),
    ModelConfig("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True, 8192, _hf("HuggingFaceTB/SmolLM2-135M")),
]}
"""Published configs of the models the book talks about, by name."""


# --- KV cache and what fits --------------------------------------------------------------------

def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context: int, batch: int = 1,
                   bytes_per_element: float = 2) -> float:
    """Bytes of the key/value cache: ``2 (K and V) x layers x kv_heads x head_dim x context x
    batch x bytes_per_element``.

    ``n_kv_heads`` is the number of KEY/VALUE heads (``num_key_value_heads``), which under
    grouped-query attention is smaller than the number of query heads (Llama-2-70B: 8 vs 64).
    ``bytes_per_element``: 2 for fp16/bf16, 1 for an 8-bit cache, 0.5 for 4-bit.
    """
    for name, v in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                    ("context", context), ("batch", batch)):
        _positive_int(name, v)
    validate.number(bytes_per_element, "bytes_per_element", lo=0, lo_open=True,
                    hint="2 for fp16")
    return 2 * n_layers * n_kv_heads * head_dim * context * batch * bytes_per_element


def _model(model: str | ModelConfig) -> ModelConfig:
    if isinstance(model, ModelConfig):
        return model
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)} or a ModelConfig")
    return MODELS[model]


def fits_on_gpu(model: str | ModelConfig, fmt: str | Layout, gpu_memory_gib: float,
                context: int = 4096, batch: int = 1, kv_bytes_per_element: float = 2,
                reserve_gib: float = 0.0) -> bool:
    """Do the weights (all in ``fmt``) plus the KV cache for ``context`` x ``batch`` tokens plus
    ``reserve_gib`` (activations, CUDA context) fit in ``gpu_memory_gib``?"""
    m = _model(model)
    validate.number(reserve_gib, "reserve_gib", lo=0, hint="GiB")
    need = weight_memory_bytes(m.n_params, fmt) + m.kv_cache_bytes(context, batch, kv_bytes_per_element)
    _check_gib(gpu_memory_gib, "gpu_memory_gib")
    return need + reserve_gib * BYTES_PER_GIB <= gpu_memory_gib * BYTES_PER_GIB


def _check_gib(v, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not 0 < v < math.inf:
        raise ValueError(f"{name} must be a positive finite number of GiB, got {v!r}")


def max_context_that_fits(model: str | ModelConfig, fmt: str | Layout, gpu_memory_gib: float,
                          batch: int = 1, kv_bytes_per_element: float = 2,
                          reserve_gib: float = 0.0) -> int:
    """Largest number of tokens (per sequence, ``batch`` sequences) whose KV cache fits beside
    the weights; 0 when the weights alone do not fit."""
    m = _model(model)
    _check_gib(gpu_memory_gib, "gpu_memory_gib")
    validate.number(reserve_gib, "reserve_gib", lo=0, hint="GiB")
    free = (gpu_memory_gib - reserve_gib) * BYTES_PER_GIB - weight_memory_bytes(m.n_params, fmt)
    per_token = m.kv_cache_bytes(1, batch, kv_bytes_per_element)
    return max(0, math.floor(free / per_token))
