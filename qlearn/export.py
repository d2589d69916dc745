"""One call from a qlearn model to a GGUF file that llama.cpp loads: :func:`to_gguf`.

A GGUF model file is three things, and this module fills each from the torch model:

* metadata: the architecture hyper-parameters llama.cpp reads (``llama.block_count``,
  ``llama.attention.head_count_kv``...) and the tokenizer (vocabulary, merges, special ids);
* tensor names: llama.cpp's (``blk.{i}.attn_q.weight``...), mapped from the Hugging Face names
  qlearn's :class:`~qlearn.models.llama.LlamaModel` uses;
* tensor data: every weight quantized with the type :func:`qlearn.gguf_mixes.mix_plan` gives it
  (the rules of ``llama-quantize``), by :func:`qlearn.kquants.quantize` (ggml's quantizers,
  byte for byte), optionally weighted by an importance matrix, and written by
  :func:`qlearn.gguf_io.write_gguf`.

Q and K rows are stored permuted: llama.cpp rotates adjacent pairs (2i, 2i+1), the model here
rotates (i, i + head_dim/2) like Hugging Face, so :func:`qlearn.models.smollm2.permute_qk`
reorders the rows of each head (a pure reordering: no rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import gguf_mixes, validate

__all__ = ["model_config", "gguf_tensors", "tokenizer_metadata", "model_metadata", "to_gguf"]

# qlearn (Hugging Face) module name -> GGUF name inside block i
BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # llama.cpp's token types (LLAMA_TOKEN_TYPE_*)


def _config(model):
    from .models.llama import LlamaModel

    if not isinstance(model, LlamaModel):
        raise TypeError(
            f"expected a qlearn.models.LlamaModel (from qlearn.models.load), got {type(model).__name__}: "
            "to_gguf writes llama-architecture files only"
        )
    cfg = model.config
    if cfg.dim % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
        raise ValueError(
            f"llama.cpp cannot load this model: dim={cfg.dim}, n_heads={cfg.n_heads}, "
            f"n_kv_heads={cfg.n_kv_heads} (need dim % n_heads == 0, n_heads % n_kv_heads == 0, "
            "an even head_dim)"
        )
    return cfg


def model_config(model) -> gguf_mixes.ModelConfig:
    """The :class:`qlearn.gguf_mixes.ModelConfig` (shapes for the mix rules) of a LlamaModel."""
    c = _config(model)
    return gguf_mixes.ModelConfig(n_layers=c.n_layers, dim=c.dim, ffn_dim=c.ffn_dim, vocab=c.vocab_size,
                                  n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                                  tied_embeddings=c.tie_embeddings)


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """GGUF name -> float32 numpy weight in llama.cpp's layout, in llama.cpp's file order.

    Matrices are ``(out_features, in_features)``; norms ``(dim,)``. Q/K rows are permuted
    for llama.cpp's interleaved rotary when the model uses the "half" layout.
    """
    from .models.smollm2 import permute_qk

    c = _config(model)
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    for name, w in sd.items():
        if not np.isfinite(w).all():
            raise ValueError(f"{name} contains NaN or Inf: llama.cpp would load a broken model")
    out = {"token_embd.weight": sd["embed_tokens.weight"]}
    for i in range(c.n_layers):
        for hf, gg in BLOCK_NAMES.items():
            w = sd[f"layers.{i}.{hf}.weight"]
            if c.rope_style == "half" and gg in ("attn_q", "attn_k"):
                w = permute_qk(w, c.n_heads if gg == "attn_q" else c.n_kv_heads)
            out[f"blk.{i}.{gg}.weight"] = np.ascontiguousarray(w)
    out["output_norm.weight"] = sd["norm.weight"]
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def tokenizer_metadata(tokenizer) -> dict:
    """``tokenizer.ggml.*`` metadata (gpt2-style byte-level BPE) from a qlearn Tokenizer."""
    import json

    from .models.tokenizer import Tokenizer

    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f"tokenizer must be a qlearn.models.Tokenizer (the second value of qlearn.models.load), "
            f"got {type(tokenizer).__name__}"
        )
    spec = json.loads(tokenizer.hf.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"llama.cpp's gpt2 vocabulary needs a BPE tokenizer, got {spec['model']['type']}")
    vocab = tokenizer.hf.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    if any(t is None for t in tokens):
        raise ValueError("the tokenizer's ids are not contiguous 0..n-1; llama.cpp needs every id")
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    pre = spec.get("pre_tokenizer") or {}
    digits = pre.get("type") == "Sequence" and any(p.get("type") == "Digits" for p in pre["pretokenizers"])
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else eos
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm" if digits else "gpt-2",  # smollm: every digit its own piece
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [TOKEN_CONTROL if t in special else TOKEN_NORMAL for t in tokens],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": bos,
        "tokenizer.ggml.eos_token_id": eos,
        "tokenizer.ggml.add_bos_token": False,  # qlearn's models were trained without a BOS
        "tokenizer.ggml.add_space_prefix": False,
    }


def model_metadata(model, mix: str, name: str = "qlearn model") -> dict:
    """``general.*`` and ``llama.*`` metadata llama.cpp needs to build the graph."""
    c = _config(model)
    if not isinstance(mix, str):
        raise TypeError(f"mix must be a preset name such as 'Q4_K_M', got {type(mix).__name__}")
    gguf_mixes.default_type(mix)  # raises for an unknown preset
    validate.text(name, "name")
    return {
        "general.name": name,
        "general.file_type": gguf_mixes.FILE_TYPES.get(mix, gguf_mixes.FILE_TYPES["F32"]),
        "llama.block_count": c.n_layers,
        "llama.context_length": c.max_seq_len,
        "llama.embedding_length": c.dim,
        "llama.feed_forward_length": c.ffn_dim,
        "llama.attention.head_count": c.n_heads,
        "llama.attention.head_count_kv": c.n_kv_heads,
        "llama.rope.freq_base": float(c.rope_base),
        "llama.attention.layer_norm_rms_epsilon": float(c.rms_eps),
        "llama.vocab_size": c.vocab_size,
        "llama.rope.dimension_count": c.head_dim,
    }


def _check_imatrix(imatrix, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from . import imatrix as im

    if imatrix is None:
        return {}
    if isinstance(imatrix, (str, Path)):
        imatrix = im.read_imatrix(imatrix)
    if not isinstance(imatrix, dict) or not imatrix:
        raise TypeError(
            "imatrix must be None, a path to a llama-imatrix GGUF file, or a non-empty dict "
            f"GGUF tensor name -> (in_features,) float32, got {type(imatrix).__name__}"
        )
    out = {}
    for name, v in imatrix.items():
        if name not in tensors or tensors[name].ndim != 2:
            raise ValueError(
                f"imatrix entry {name!r} is not a weight matrix of this model (expected names like "
                f"'blk.0.attn_q.weight'): was the imatrix computed for another model?"
            )
        v = validate.float_array(v, f"imatrix entry {name!r}").reshape(-1)
        cols = tensors[name].shape[1]
        if v.size != cols:
            raise ValueError(f"imatrix entry {name!r} has {v.size} values, the tensor has {cols} "
                             f"columns (expected one per column, got {v.size})")
        if (v < 0).any():
            raise ValueError(f"imatrix entry {name!r} must be non-negative, got minimum {v.min()}")
        out[name] = v
    return out


def to_gguf(model, path, mix: str = "Q4_K_M", imatrix=None, tokenizer=None, *, pure: bool = False,
            name: str = "qlearn model") -> Path:
    """Write ``model`` as a llama.cpp GGUF file quantized like ``llama-quantize`` would.

    model: a :class:`qlearn.models.LlamaModel` (qlearn-tiny, SmolLM2, or one loaded from a GGUF).
    path: the file to write. mix: a llama-quantize preset (``qlearn.gguf_mixes.MIXES``: "Q4_K_M",
        "Q8_0", "IQ4_XS"...) or a ggml type for pure quantization ("Q4_K", "F16", "F32").
    imatrix: None, a llama-imatrix GGUF path, or a dict GGUF tensor name -> ``(in_features,)``
        float32 mean squared activations (:func:`qlearn.imatrix.compute_model_imatrix`).
    tokenizer: the model's :class:`qlearn.models.Tokenizer` (llama.cpp needs the vocabulary).
    pure: skip the preset's per-tensor rules (``llama-quantize --pure``).
    Returns the path. The bytes of every tensor equal what ``llama-quantize`` writes from the
    F32 file ``to_gguf(model, p, "F32", tokenizer=tok)`` with the same preset and imatrix.
    """
    from . import kquants

    if not isinstance(mix, str):
        raise TypeError(f"mix must be a preset name such as 'Q4_K_M', got {type(mix).__name__}")
    gguf_mixes.default_type(mix)  # raises for an unknown preset
    _config(model)  # a LlamaModel llama.cpp can load, or a clear error
    path = validate.path(path)
    validate.flag(pure, "pure")
    validate.text(name, "name")
    if tokenizer is None:
        raise ValueError("expected tokenizer=... (llama.cpp reads the vocabulary from the GGUF "
                         "file), got None")
    tok_meta = tokenizer_metadata(tokenizer)
    n_vocab = len(tok_meta["tokenizer.ggml.tokens"])
    if n_vocab != model.config.vocab_size:
        raise ValueError(
            f"llama.cpp cannot load this pair: the tokenizer has {n_vocab} tokens but the model's "
            f"embedding has {model.config.vocab_size} rows (pass the model's own tokenizer)"
        )
    tensors = gguf_tensors(model)
    imat = _check_imatrix(imatrix, tensors)
    plan = gguf_mixes.mix_plan(mix, model_config(model), has_imatrix=bool(imat), pure=pure)
    entries = {}
    for tname, w in tensors.items():
        qtype = plan[tname]
        if qtype in ("F32", "F16"):
            entries[tname] = (w, qtype)
        else:
            entries[tname] = (kquants.quantize(w, qtype, imatrix=imat.get(tname)), qtype, w.shape)
    metadata = {**model_metadata(model, mix, name), **tok_meta}
    path = Path(path)
    from .gguf_io import write_gguf

    return write_gguf(path, entries, metadata, arch="llama")
