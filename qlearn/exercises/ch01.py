"""Exercises of chapter 1, *Why quantize*: parameter counts, KV cache, bits per weight, units."""

from __future__ import annotations

import numpy as np

from qlearn import memory
from qlearn.exercises import Mismatch, call_student, compare_close, compare_equal, exercise


def _random_config(rng: np.random.Generator) -> memory.ModelConfig:
    heads = int(rng.choice([4, 8, 16, 32]))
    head_dim = int(rng.choice([32, 64, 128]))
    return memory.ModelConfig("random", hidden=heads * head_dim, intermediate=int(rng.integers(2, 9)) * 256,
                              layers=int(rng.integers(1, 40)), heads=heads,
                              kv_heads=int(rng.choice([h for h in (1, 2, 4, 8, heads) if heads % h == 0])),
                              vocab=int(rng.integers(1000, 200_000)), tied=bool(rng.integers(2)),
                              max_context=4096)


@exercise("ch01.param_count",
          hint="per layer: q and o are d x d, k and v are d x (kv_heads * head_dim), three d x d_ff MLP "
               "matrices, two RMSNorm weights of d; plus embeddings, the final norm, and lm_head unless tied")
def _param_count(fn):
    rng = np.random.default_rng()
    for m in [memory.MODELS["Llama-3-8B"], memory.MODELS["SmolLM2-135M"]] + [_random_config(rng) for _ in range(5)]:
        got = call_student(fn, m.hidden, m.intermediate, m.layers, m.heads, m.kv_heads, m.vocab, m.tied)
        compare_equal(f"param_count(hidden={m.hidden}, intermediate={m.intermediate}, layers={m.layers}, "
                      f"heads={m.heads}, kv_heads={m.kv_heads}, vocab={m.vocab}, tied={m.tied})",
                      got, m.n_params)


@exercise("ch01.kv_cache_bytes",
          hint="2 (keys and values) x layers x KV heads x head_dim x context x batch x bytes per element")
def _kv(fn):
    rng = np.random.default_rng()
    for _ in range(6):
        args = (int(rng.integers(1, 128)), int(rng.choice([1, 2, 4, 8, 32])), int(rng.choice([64, 128])),
                int(rng.integers(1, 200_000)), int(rng.integers(1, 64)), float(rng.choice([0.5, 1, 2, 4])))
        compare_close(f"kv_cache_bytes{args}", call_student(fn, *args), memory.kv_cache_bytes(*args))


@exercise("ch01.bits_per_weight",
          hint="add count x bits over the fields of one block, divide by the weights in the block")
def _bpw(fn):
    for name in ["Q4_K", "Q6_K", "Q8_0", "NF4 + double quant", "INT4-g128 (4-bit zero)"]:
        lay = memory.FORMATS[name]
        fields = [(f.count, f.bits) for f in lay.fields]
        compare_close(f"bits_per_weight({lay.block}, {fields})  [{name}]", call_student(fn, lay.block, fields),
                      lay.bits_per_weight, rtol=1e-12)


@exercise("ch01.gib_vs_gb", hint="GB divides bytes by 1e9, GiB by 2**30; FP16 is 2 bytes per weight")
def _units(answer):
    m = memory.MODELS["Llama-2-70B"]
    b = memory.weight_memory_bytes(m.n_params, "FP16")
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise Mismatch("answer should be a pair (gb, gib)", (round(memory.gb(b), 2), "..."), answer)
    compare_close("Llama-2-70B FP16 weights (GB, GiB)", np.asarray(answer, float),
                  np.array([memory.gb(b), memory.gib(b)]), rtol=1e-3)


@exercise("ch01.max_context",
          hint="free bytes = GPU GiB x 2**30 - weight bytes; divide by the KV bytes of ONE token, round down")
def _max_ctx(fn):
    rng = np.random.default_rng()
    cases = [("Llama-2-7B", "FP16", 24.0), ("Llama-2-70B", "Q4_K", 80.0)]
    cases += [(str(rng.choice(["Llama-3-8B", "Mistral-7B", "Llama-2-13B"])),
               str(rng.choice(["Q8_0", "Q4_K", "NF4"])), float(rng.choice([16, 24, 48, 80])))
              for _ in range(3)]
    for model, fmt, g in cases:
        m = memory.MODELS[model]
        got = call_student(fn, m.n_params, memory.bits_per_weight(fmt), m.layers, m.kv_heads, m.head_dim, g)
        compare_equal(f"max_context({model}, {fmt}, gpu_gib={g})", got,
                      memory.max_context_that_fits(model, fmt, g))
