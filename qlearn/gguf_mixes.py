"""llama.cpp's quantization mixes (``llama-quantize`` presets Q2_K ... Q8_0, IQ4_NL, IQ4_XS) as
per-tensor type rules.

A "mix" (llama.cpp calls it a file type, ``LLAMA_FTYPE_MOSTLY_Q4_K_M``...) is not one type: it
names a *default* type for the bulk of the weights and a handful of rules that give more bits
to the tensors whose errors hurt most. The rules below restate ``llama_tensor_get_type`` in
``src/llama-quant.cpp`` (llama.cpp, 2026) for dense Llama-style models:

- ``output.weight`` (the LM head) gets Q6_K in every k-quant mix: its error lands directly on
  the logits of every token. It falls back to Q8_0 if its row length is not a multiple of 256.
  With tied embeddings ``token_embd.weight`` *is* the head and follows the same rule.
- ``attn_v`` (values) and ``ffn_down`` (the MLP's output projection) get more bits on
  "use_more_bits" layers in the _M mixes: the first eighth, the last eighth, and every third
  layer in between (see :func:`use_more_bits`). Both write straight into the residual stream,
  and the first and last layers are the most sensitive.
- _S ("small") mixes add fewer extra bits: Q4_K_S lifts only the first 4 attn_v and the first
  eighth of ffn_down to Q5_K. The suffix is about file size, not block size: every Q4_K block is
  256 weights in both Q4_K_S and Q4_K_M.
- The low-bit mixes protect more: Q3_K_M puts attn_output and nearly all ffn_down in Q4_K,
  Q2_K puts attn_v in Q3_K (Q4_K with grouped-query attention, where attn_v is small) and
  ffn_down and attn_output in Q3_K.
- Q3_K_L lifts attn_v, attn_output and ffn_down to Q5_K; Q3_K_S, Q5_K_S, Q6_K, Q4_1 and Q5_1
  have no rule beyond the LM head. IQ4_NL/IQ4_XS give attn_v Q5_K under strong grouped-query
  attention and, *without* an imatrix, the first eighth of ffn_down Q5_K. With an imatrix,
  Q4_0/Q5_0 store the first eighth of ffn_down as Q4_1/Q5_1 ("guard against craziness").
- Norms and other 1-D tensors are never quantized (F32); ``token_embd`` keeps the default type
  (only a row is read per token, so it costs no compute and little error).
- Q8_0 keeps even the LM head in Q8_0; every other preset gives it Q6_K.
- "Pure" quantization (``llama-quantize --pure``, ``pure=True`` here, or a bare type name such as
  ``"Q4_K"`` as the mix) skips every rule: all 2-D weights get the default type, only the row
  length fallback applies.

Tensor names are GGUF's (``blk.{i}.attn_v.weight``...), as written by llama.cpp's converter.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MIXES",
    "FILE_TYPES",
    "PURE_TYPES",
    "LLAMA2_7B",
    "ModelConfig",
    "use_more_bits",
    "tensor_type",
    "llama_tensor_shapes",
    "mix_plan",
    "default_type",
    "bits_per_weight",
    "mix_bpw",
]

# preset -> default (bulk) type, as llama_ftype_get_default_type
MIXES = {
    "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K",
    "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K", "Q8_0": "Q8_0", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
}
# llama-quantize's file-type ids (LLAMA_FTYPE_MOSTLY_*), written as general.file_type
FILE_TYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
    "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30,
}
# ggml types a "pure" mix may name (every 2-D weight in that type) besides the presets
PURE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
              "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")

GQA_SMALL_V = 4  # n_head / n_head_kv from which attn_v is small enough to afford Q4_K in Q2_K
QSTATE_ATTN_V_Q4_K_S = 4  # Q4_K_S: this many first attn_v tensors get Q5_K
QSTATE_ATTN_V_Q3_K_M = 2  # Q3_K_M: this many first attn_v tensors get Q5_K
# Row-length fallbacks when a type's block does not divide the row (llama.cpp's table).
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a dense Llama-style decoder.

    n_layers, dim (hidden size), ffn_dim (MLP hidden size), vocab, n_heads, n_kv_heads
    (grouped-query attention: fewer key/value heads), tied_embeddings (no output.weight).
    """

    n_layers: int
    dim: int
    ffn_dim: int
    vocab: int
    n_heads: int
    n_kv_heads: int | None = None
    tied_embeddings: bool = False
    arch: str = "llama"

    def __post_init__(self):
        for name in ("n_layers", "dim", "ffn_dim", "vocab", "n_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
        kv = self.n_kv_heads
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or kv < 1
                               or self.n_heads % kv):
            raise ValueError(f"ModelConfig.n_kv_heads must divide n_heads={self.n_heads}, "
                             f"got {kv!r}")

    @property
    def n_gqa(self) -> int:
        return self.n_heads // (self.n_kv_heads or self.n_heads)


LLAMA2_7B = ModelConfig(n_layers=32, dim=4096, ffn_dim=11008, vocab=32000, n_heads=32, n_kv_heads=32)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's layer pattern for extra bits: the first n/8 layers, the last n/8 layers,
    and every third layer in between (i - n/8 = 2, 5, 8, ...), integer division throughout."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


def _block_size(qtype: str) -> int:
    from qlearn import blocktypes

    return blocktypes.block_info(qtype)[0]


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key in ("attn_qkv", "attn_v", "attn_k", "attn_q", "attn_output", "ffn_up", "ffn_gate", "ffn_down"):
        if f"{key}.weight" in name or (key.startswith("ffn") and key in name):
            return key
    return "other"


def _check_mix(mix: str) -> str:
    if mix not in MIXES and mix not in PURE_TYPES:
        raise ValueError(
            f"unknown mix {mix!r}: expected a llama-quantize preset ({', '.join(MIXES)}) "
            f"or a ggml type for pure quantization ({', '.join(PURE_TYPES)})"
        )
    return mix


def default_type(mix: str) -> str:
    """The bulk type of a preset, or the type itself for a pure mix ("Q4_K_M" -> "Q4_K")."""
    return MIXES.get(_check_mix(mix), mix)


def _preset_rule(mix, default, cat, i, n, *, n_gqa, arch, tied_embeddings, n_cols, is_70b,
                 has_imatrix) -> str:
    """The type a preset's rules give one quantizable tensor (before the row-length fallback)."""
    new = default
    if cat == "output" or (tied_embeddings and cat == "token_embd"):
        if arch == "falcon" or (n_cols is not None and n_cols % _block_size(default)):
            return "Q8_0"
        return "Q8_0" if default == "Q8_0" else "Q6_K"
    if cat in ("attn_v", "attn_qkv"):  # llama.cpp treats a fused QKV like attn_v
        if mix == "Q2_K":
            new = "Q4_K" if n_gqa >= GQA_SMALL_V else "Q3_K"
        elif mix == "Q3_K_M":
            new = "Q5_K" if i < QSTATE_ATTN_V_Q3_K_M else "Q4_K"
        elif mix == "Q3_K_L":
            new = "Q5_K"
        elif mix in ("IQ4_NL", "IQ4_XS") and n_gqa >= GQA_SMALL_V:
            new = "Q5_K"
        elif mix in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "Q6_K"
        elif mix == "Q4_K_S" and i < QSTATE_ATTN_V_Q4_K_S:
            new = "Q5_K"
        if is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"  # 70B: attn_v is 8x smaller than attn_q (GQA), extra bits are cheap
    elif cat == "ffn_down":
        if mix == "Q2_K":
            new = "Q3_K"
        elif mix == "Q3_K_M":
            if i < n // 16:
                new = "Q5_K"
            elif arch != "falcon" or use_more_bits(i, n):
                new = "Q4_K"
            else:
                new = "Q3_K"
        elif mix == "Q3_K_L":
            new = "Q4_K" if arch == "falcon" else "Q5_K"
        elif mix == "Q4_K_M":
            if arch == "falcon":
                new = "Q6_K" if i < n // 16 else ("Q5_K" if use_more_bits(i, n) else "Q4_K")
            elif use_more_bits(i, n):
                new = "Q6_K"
        elif mix in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not has_imatrix:
            new = "Q5_K"
        elif mix == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif mix == "Q4_K_S" and arch != "falcon" and i < n // 8:
            new = "Q5_K"
        elif mix in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            new = "Q4_1" if mix == "Q4_0" else "Q5_1"  # first ffn_down layers misbehave otherwise
    elif cat == "attn_output":
        if arch != "falcon":
            new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(mix, new)
        elif mix == "Q3_K_L":
            new = "Q4_K"
    return new


def tensor_type(
    mix: str,
    tensor_name: str,
    layer_index: int | None,
    n_layers: int,
    *,
    n_gqa: int = 1,
    arch: str = "llama",
    tied_embeddings: bool = False,
    n_dims: int = 2,
    n_cols: int | None = None,
    is_70b: bool = False,
    has_imatrix: bool = False,
    pure: bool = False,
) -> str:
    """The ggml type llama-quantize gives one tensor under ``mix``.

    tensor_name: GGUF name, e.g. "blk.3.ffn_down.weight", "output.weight".
    layer_index: the block index i of blk.i (None for non-block tensors).
    n_layers: number of blocks. n_gqa: n_head / n_head_kv. n_dims: 1 for norms/biases (kept F32).
    n_cols: row length (ne[0]); when the chosen type's block does not divide it, llama.cpp falls
        back to a 32-element type (Q4_K -> Q5_0, Q6_K -> Q8_0, ...) or F16.
    is_70b: llama.cpp's LLM_TYPE_70B special case (attn_v Q3_K/Q4_K -> Q5_K).
    has_imatrix: an importance matrix is used (changes ffn_down in IQ4_NL/IQ4_XS/Q4_0/Q5_0).
    pure: skip the per-tensor rules (``llama-quantize --pure``); a mix that is a bare type
        name (``"Q4_K"``) is always pure. "F32"/"F16" leave every tensor unquantized.
    Returns a type name such as "Q6_K", or "F32" for tensors that stay unquantized.
    """
    _check_mix(mix)
    if n_layers <= 0:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    cat = _category(tensor_name)
    if layer_index is not None and not 0 <= layer_index < n_layers:
        raise ValueError(f"layer_index must be in [0, {n_layers}), got {layer_index} for {tensor_name!r}")
    if cat in ("attn_v", "attn_qkv", "ffn_down") and layer_index is None:
        raise ValueError(f"{tensor_name!r} is a per-layer tensor: give its layer_index")
    if n_dims < 2 or not tensor_name.endswith("weight") or "_norm.weight" in tensor_name:
        return "F32"  # norms and 1-D tensors are never quantized
    default = default_type(mix)
    if default in ("F32", "F16"):
        return default  # llama.cpp applies no rule to unquantized file types
    new = default
    i, n = layer_index, n_layers
    if not pure and mix in MIXES:
        new = _preset_rule(mix, default, cat, i, n, n_gqa=n_gqa, arch=arch,
                           tied_embeddings=tied_embeddings, n_cols=n_cols, is_70b=is_70b,
                           has_imatrix=has_imatrix)
    if n_cols is not None and n_cols % _block_size(new):
        new = _FALLBACK.get(new, "F16")
        if n_cols % _block_size(new):
            new = "F16"
    return new


def llama_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names -> numpy shapes (rows, cols) of a dense Llama model, in file order."""
    c = config
    head_dim = c.dim // c.n_heads
    kv_dim = head_dim * (c.n_kv_heads or c.n_heads)
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (c.vocab, c.dim)}
    for i in range(c.n_layers):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (c.dim,)
        shapes[b + "attn_q.weight"] = (c.dim, c.dim)
        shapes[b + "attn_k.weight"] = (kv_dim, c.dim)
        shapes[b + "attn_v.weight"] = (kv_dim, c.dim)
        shapes[b + "attn_output.weight"] = (c.dim, c.dim)
        shapes[b + "ffn_norm.weight"] = (c.dim,)
        shapes[b + "ffn_gate.weight"] = (c.ffn_dim, c.dim)
        shapes[b + "ffn_up.weight"] = (c.ffn_dim, c.dim)
        shapes[b + "ffn_down.weight"] = (c.dim, c.ffn_dim)
    shapes["output_norm.weight"] = (c.dim,)
    if not c.tied_embeddings:
        shapes["output.weight"] = (c.vocab, c.dim)
    return shapes


def _layer_of(name: str) -> int | None:
    if name.startswith("blk."):
        return int(name.split(".")[1])
    return None


def mix_plan(mix: str, model_config: ModelConfig, *, has_imatrix: bool = False,
             pure: bool = False) -> dict[str, str]:
    """Per-tensor types llama-quantize would choose: GGUF tensor name -> type name.

    has_imatrix: an importance matrix is given (``llama-quantize --imatrix``); pure: no rules
    (``--pure``). See :func:`tensor_type`."""
    _check_mix(mix)
    if not isinstance(model_config, ModelConfig):
        raise ValueError(f"model_config must be a qlearn.gguf_mixes.ModelConfig, got {type(model_config).__name__}")
    c = model_config
    return {
        name: tensor_type(
            mix, name, _layer_of(name), c.n_layers, n_gqa=c.n_gqa, arch=c.arch,
            tied_embeddings=c.tied_embeddings, n_dims=len(shape), n_cols=shape[-1],
            has_imatrix=has_imatrix, pure=pure,
        )
        for name, shape in llama_tensor_shapes(c).items()
    }


def bits_per_weight(qtype: str) -> float:
    """Storage bits per weight of a ggml type: bytes per block * 8 / weights per block
    (from :mod:`qlearn.blocktypes`)."""
    from qlearn import blocktypes

    return blocktypes.bits_per_weight(qtype)


def mix_bpw(mix: str, model_config: ModelConfig, *, has_imatrix: bool = False, pure: bool = False) -> float:
    """Average bits per weight of the whole model under ``mix`` (every tensor counted, norms
    in F32 included): total tensor bits / total parameters."""
    plan = mix_plan(mix, model_config, has_imatrix=has_imatrix, pure=pure)
    shapes = llama_tensor_shapes(model_config)
    bits = 0.0
    params = 0
    for name, shape in shapes.items():
        n = 1
        for s in shape:
            n *= s
        bits += n * bits_per_weight(plan[name])
        params += n
    return bits / params
