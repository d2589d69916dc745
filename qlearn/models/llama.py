"""A Llama-style decoder in plain torch: the architecture of Llama, Mistral and SmolLM.

Module names follow Hugging Face's ``LlamaForCausalLM`` (without the ``model.`` prefix), so what
you learn here transfers to real checkpoints::

    model.embed_tokens                      nn.Embedding (vocab, dim)
    model.layers[i].input_layernorm         RMSNorm (dim,)
    model.layers[i].self_attn.q_proj        nn.Linear dim -> n_heads * head_dim
    model.layers[i].self_attn.k_proj        nn.Linear dim -> n_kv_heads * head_dim
    model.layers[i].self_attn.v_proj        nn.Linear dim -> n_kv_heads * head_dim
    model.layers[i].self_attn.o_proj        nn.Linear n_heads * head_dim -> dim
    model.layers[i].post_attention_layernorm RMSNorm (dim,)
    model.layers[i].mlp.gate_proj           nn.Linear dim -> ffn_dim
    model.layers[i].mlp.up_proj             nn.Linear dim -> ffn_dim
    model.layers[i].mlp.down_proj           nn.Linear ffn_dim -> dim
    model.norm                              RMSNorm (dim,)
    model.lm_head                           nn.Linear dim -> vocab (weight shared with embed_tokens when tied)

Each decoder layer is callable on its own, ``layer(h) -> h`` for ``h: (batch, seq, dim) float32``:
the causal mask and the rotary positions ``0..seq-1`` are computed inside, so quantization
algorithms can run a layer at a time on captured hidden states.

KV cache: ``cache = model.new_cache()``, then ``model(prompt, cache=cache)`` (prefill: every layer
writes its keys, after the rotary, and its values) and ``model(next_token, cache=cache)`` (decode:
one new position attends over everything cached). Positions continue from ``cache.length``.
The cache belongs to attention, not to the linears: ``Attention.cache_factory`` makes each layer's
store (:class:`LayerCache`, float32), and :mod:`qlearn.kvcache` swaps in quantized stores. Without
a cache argument a forward still writes its K/V into a temporary store and reads them back, so a
quantized store acts in a plain ``model(tokens)`` exactly as in incremental decoding.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from qlearn import validate

__all__ = ["LlamaConfig", "RMSNorm", "Attention", "MLP", "DecoderLayer", "LlamaModel",
           "rotary_tables", "apply_rotary", "LayerCache", "KVCache"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-style decoder.

    ``rope_style`` picks the rotary layout: ``"half"`` rotates pairs (i, i + head_dim/2) as Hugging
    Face does; ``"interleaved"`` rotates pairs (2i, 2i+1) as llama.cpp does (GGUF files store Q/K rows
    permuted for that layout).
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 256
    rope_style: str = "half"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim must be a multiple of n_heads, got dim={self.dim}, n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads must be a multiple of n_kv_heads (grouped-query attention), "
                             f"got n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_style not in ("half", "interleaved"):
            raise ValueError(f"rope_style must be 'half' or 'interleaved', got {self.rope_style!r}")


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last axis. weight: (dim,) float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # torch's fused kernel: the same float32 operations as below in one call (equal
            # bits in tests/test_models.py), a third of the time on a one-token decode step
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


def rotary_tables(seq: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: (seq, head_dim // 2) float32 for positions 0..seq-1 and frequencies base^(-2i/head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.arange(seq, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
    """Rotate x: (batch, heads, seq, head_dim) by position.

    style "half": pairs are (i, i + head_dim/2) (Hugging Face); "interleaved": pairs (2i, 2i+1)
    (llama.cpp / the original Meta code). cos, sin: (seq, head_dim/2).
    """
    if style not in ("half", "interleaved"):
        raise ValueError(f"style must be 'half' or 'interleaved', got {style!r}")
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if not (bool(torch.isfinite(cos).all()) and bool(torch.isfinite(sin).all())):
        raise ValueError("cos and sin must be finite, got NaN/Inf (rotary_tables makes them)")
    if cos.shape != sin.shape or x.shape[-1] != 2 * cos.shape[-1] \
            or x.shape[-2] != cos.shape[-2]:
        raise ValueError(f"cos and sin must be (seq, head_dim/2) = ({x.shape[-2]}, "
                         f"{x.shape[-1] // 2}) for x of shape {tuple(x.shape)}, got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    return _rotate(x, cos, sin, style)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """:func:`apply_rotary` without its input checks (attention calls it twice per layer and
    token with tables it made itself)."""
    if style == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class LayerCache:
    """Keys (after the rotary) and values of one attention layer, kept in float32.

    ``k``, ``v``: (batch, n_kv_heads, length, head_dim) float32, or None while empty.
    Subclasses (:mod:`qlearn.kvcache`) store them in another format; attention only calls
    :meth:`update` and reads :attr:`length`.
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v: (batch, n_kv_heads, t, head_dim); return all cached keys and values
        (batch, n_kv_heads, length, head_dim), as attention reads them back."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def nbytes(self) -> int:
        """Bytes the stored K and V occupy (float32: 4 per element)."""
        if self.k is None:
            return 0
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class KVCache:
    """One :class:`LayerCache` per decoder layer (made by each layer's ``self_attn.new_cache()``).

    ``model(tokens, cache=c)`` appends ``tokens.shape[1]`` positions to every layer.
    """

    def __init__(self, model: "LlamaModel"):
        validate.module(model, decoder=True)
        self.layers = [layer.self_attn.new_cache() for layer in model.layers]
        self.batch: int | None = None  # set by the first forward that uses the cache

    @property
    def length(self) -> int:
        """Number of cached positions (the same in every layer)."""
        return self.layers[0].length if self.layers else 0

    def nbytes(self) -> int:
        """Bytes of all layers' stored K and V."""
        return sum(c.nbytes() for c in self.layers)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary positions (no biases).

    ``cache_factory``: a callable returning an empty :class:`LayerCache` (or subclass); it decides
    how this layer stores K and V.
    """

    cache_factory = LayerCache

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.rope_base, self.rope_style = cfg.rope_base, cfg.rope_style
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def new_cache(self) -> LayerCache:
        """An empty store for this layer's keys and values."""
        return self.cache_factory()

    def _rotary(self, start: int, t: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (t, head_dim / 2) of positions start..start + t - 1: rows of one table kept
        per layer (grown by doubling), so a decode step does not recompute every position.
        Each entry is an elementwise function of (position, frequency): the same bits as
        ``rotary_tables(start + t, ...)[start:]`` (checked in tests/test_models.py)."""
        tab = getattr(self, "_rope_table", None)
        if tab is None or tab[0].shape[0] < start + t or tab[0].device != device:
            n = max(start + t, 2 * (0 if tab is None else tab[0].shape[0]), 64)
            tab = self._rope_table = rotary_tables(n, self.head_dim, self.rope_base, device=device)
        return tab[0][start:start + t], tab[1][start:start + t]

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """x: (batch, seq, dim) -> (batch, seq, dim).

        cache: this layer's store; x holds positions ``cache.length .. cache.length + seq - 1``,
        whose K/V are appended. None: positions 0..seq-1 and a temporary store.
        """
        b, t, _ = x.shape
        if cache is None:
            cache = self.new_cache()
        start = cache.length
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)     # (B, nh, T, hd)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        cos, sin = self._rotary(start, t, x.device)
        q = _rotate(q, cos, sin, self.rope_style)
        k = _rotate(k, cos, sin, self.rope_style)
        k, v = cache.update(k, v)                                  # (B, nkv, start + T, hd)
        group = self.n_heads // self.n_kv_heads
        if t == 1 and start > 0 and group > 1:
            # decode: the `group` query heads of one KV head become `group` rows of one query
            # block, so K and V are read in place instead of copied `group` times
            y = F.scaled_dot_product_attention(q.reshape(b, self.n_kv_heads, group, self.head_dim), k, v)
            return self.o_proj(y.reshape(b, t, self.n_heads * self.head_dim))
        if group > 1:  # each KV head serves `group` query heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        elif t == 1:  # one new position sees every cached one
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # query i (absolute start + i) sees keys 0..start + i
            keep = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: h + attn(norm(h)), then h + mlp(norm(h)). h: (batch, seq, dim) float32."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm and LM head. ``model(tokens) -> logits``.

    tokens: (batch, seq) int64 -> logits: (batch, seq, vocab) float32.
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.rms_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def init_weights(self, seed: int = 0) -> "LlamaModel":
        """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layers)."""
        g = torch.Generator().manual_seed(seed)
        std = 0.02  # GPT-2/Llama default; keeps initial logits near uniform
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.ndim == 2:
                    s = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                    p.copy_(torch.randn(p.shape, generator=g) * s)
                else:
                    p.fill_(1.0)
        return self

    def new_cache(self) -> KVCache:
        """An empty :class:`KVCache` with one store per layer (see ``Attention.cache_factory``)."""
        return KVCache(self)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens: (batch, seq) int64 -> logits (batch, seq, vocab) float32.

        cache: a :class:`KVCache` from :meth:`new_cache`; the tokens continue its positions and
        their K/V are appended (prefill with the prompt, then one token per decode step).
        """
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            raise ValueError(f"tokens must be (batch, seq) int64, got "
                             f"{tuple(tokens.shape) if hasattr(tokens, 'shape') else tokens!r} "
                             f"(add a batch axis with tokens[None])")
        tokens = validate.tokens(tokens, ndim=2, vocab_size=self.config.vocab_size)
        if cache is not None:
            if not isinstance(cache, KVCache) or len(cache.layers) != len(self.layers):
                raise TypeError(f"cache must be a KVCache from model.new_cache() with "
                                f"{len(self.layers)} layers, got {type(cache).__name__}")
            if cache.batch is not None and cache.batch != tokens.shape[0]:
                raise ValueError(f"tokens have batch {tokens.shape[0]} but the cache holds batch "
                                 f"{cache.batch}")
            cache.batch = tokens.shape[0]
        h = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            h = layer(h) if cache is None else layer(h, cache.layers[i])
        return self.lm_head(self.norm(h))

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())
