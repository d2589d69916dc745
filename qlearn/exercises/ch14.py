"""Exercises of chapter 14, choosing a quantization. Each check runs the student's code on fresh
inputs and compares it with qlearn.memory, qlearn.gguf_mixes and the llama-perplexity protocol."""
from __future__ import annotations

import math

import numpy as np

from qlearn import gguf_mixes, memory
from qlearn.exercises import Mismatch, call_student, compare_close, exercise


def _rng():
    return np.random.default_rng()


def _random_config(rng) -> memory.ModelConfig:
    heads = int(rng.choice([8, 16, 32, 64]))
    kv = int(rng.choice([h for h in (1, 2, 4, 8, heads) if heads % h == 0]))
    head_dim = int(rng.choice([64, 128]))
    return memory.ModelConfig("random", heads * head_dim, int(rng.integers(2, 8)) * 1024,
                              int(rng.integers(16, 81)), heads, kv, 32000, bool(rng.integers(2)), 8192)


@exercise("ch14.kv_cache_bytes", hint="2 (K and V) x layers x kv_heads x head_dim x context x batch x 2 bytes; "
                                      "use the KV heads, not the query heads")
def kv_cache_bytes(fn):
    """fn(config: qlearn.memory.ModelConfig, context, batch) -> bytes of an fp16 KV cache."""
    rng = _rng()
    for _ in range(5):
        cfg = _random_config(rng)
        ctx, batch = int(rng.integers(1, 32768)), int(rng.integers(1, 9))
        got = call_student(fn, cfg, ctx, batch, what="kv_cache_bytes(config, context, batch)")
        compare_close(f"kv_cache_bytes for layers={cfg.layers}, kv_heads={cfg.kv_heads}, "
                      f"head_dim={cfg.head_dim}, context={ctx}, batch={batch}",
                      float(got), memory.kv_cache_bytes(cfg.layers, cfg.kv_heads, cfg.head_dim, ctx, batch))


@exercise("ch14.plan_bpw", hint="sum over tensors of (number of weights x bits per weight of its type), "
                                "divided by the total number of weights; qlearn.gguf_mixes.bits_per_weight "
                                "gives a type's bits")
def plan_bpw(fn):
    """fn(plan: {name: type}, shapes: {name: shape}) -> average bits per weight."""
    rng = _rng()
    cfg = gguf_mixes.ModelConfig(n_layers=int(rng.integers(4, 33)), dim=int(rng.choice([256, 512, 576])),
                                 ffn_dim=int(rng.choice([768, 1536])), vocab=4096, n_heads=8, n_kv_heads=2,
                                 tied_embeddings=bool(rng.integers(2)))
    mix = str(rng.choice(list(gguf_mixes.MIXES)))
    plan, shapes = gguf_mixes.mix_plan(mix, cfg), gguf_mixes.llama_tensor_shapes(cfg)
    got = call_student(fn, dict(plan), dict(shapes), what="plan_bpw(plan, shapes)")
    compare_close(f"bits per weight of {mix}", float(got), gguf_mixes.mix_bpw(mix, cfg), rtol=1e-9)


def _protocol_ppl(nll: np.ndarray) -> float:
    n_ctx = nll.shape[1] + 1
    first = n_ctx // 2
    return math.exp(float(nll[:, first:].mean()))


@exercise("ch14.protocol_ppl", hint="nll[c, j] is the loss of token j+1 of chunk c; llama-perplexity scores "
                                    "tokens n_ctx//2 + 1 .. n_ctx-1, i.e. columns n_ctx//2 .. n_ctx-2")
def protocol_ppl(fn):
    """fn(nll: (n_chunks, n_ctx - 1) per-token losses) -> perplexity by llama-perplexity's protocol."""
    rng = _rng()
    n_ctx = int(rng.choice([8, 16, 64, 512]))
    # early tokens have less context, hence higher loss: scoring them changes the answer
    nll = rng.gamma(2.0, 1.0, (int(rng.integers(2, 6)), n_ctx - 1)) + np.linspace(3, 0, n_ctx - 1)
    got = call_student(fn, nll.copy(), what="protocol_ppl(nll)")
    exp = _protocol_ppl(nll)
    if got is not None and abs(float(got) - math.exp(nll.mean())) < 1e-9 * math.exp(nll.mean()):
        raise Mismatch("protocol_ppl scored every token", exp, got,
                       hint="only the second half of each chunk is scored")
    compare_close("protocol_ppl(nll)", float(got), exp, rtol=1e-9)


@exercise("ch14.fits", hint="weights = n_params x bits_per_weight / 8 bytes; add the KV cache and the "
                            "reserve; compare with memory_gib x 2**30 bytes")
def fits(fn):
    """fn(n_params, bpw, kv_bytes, memory_gib, reserve_gib) -> bool."""
    rng = _rng()
    for _ in range(20):
        n, bpw = float(rng.uniform(1e9, 8e10)), float(rng.uniform(2.5, 16))
        kv, mem, res = float(rng.uniform(0, 2e10)), float(rng.choice([8, 16, 24, 48, 80])), 0.5
        exp = n * bpw / 8 + kv + res * 2 ** 30 <= mem * 2 ** 30
        got = call_student(fn, n, bpw, kv, mem, res, what="fits(...)")
        if bool(got) != exp:
            raise Mismatch(f"fits(n_params={n:.3g}, bpw={bpw:.3f}, kv_bytes={kv:.3g}, memory_gib={mem}, "
                           f"reserve_gib={res})", exp, got)
