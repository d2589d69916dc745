"""Interview questions of chapter 13, running quantized models on a CPU. Every number is computed
by qlearn (formats, model shapes, kernels); machine figures are stated assumptions, not
measurements, so the answers do not depend on the machine that renders them."""
from __future__ import annotations

import numpy as np

from qlearn import gguf_mixes, kernels
from qlearn.interview import question

# A stated example machine (assumptions for the arithmetic, not measurements): one core that
# streams 20 GB/s from DRAM and does 100 GFLOP/s of float32 multiply-adds.
EXAMPLE_GBS = 20.0
EXAMPLE_GFLOPS = 100.0
# SmolLM2-135M's shapes (qlearn.models.load("smollm2-135m").config)
SMOLLM2 = gguf_mixes.ModelConfig(n_layers=30, dim=576, ffn_dim=1536, vocab=49152, n_heads=9,
                                 n_kv_heads=3, tied_embeddings=True)


def _bpw(t):
    return gguf_mixes.bits_per_weight(t)


def _model_bytes(mix_or_type):
    shapes = gguf_mixes.llama_tensor_shapes(SMOLLM2)
    if mix_or_type in gguf_mixes.MIXES:
        plan = gguf_mixes.mix_plan(mix_or_type, SMOLLM2)
    else:
        plan = {k: (mix_or_type if len(s) == 2 else "F32") for k, s in shapes.items()}
    return sum(int(np.prod(s)) * _bpw(plan[k]) / 8 for k, s in shapes.items())


def _intensity():
    ai32 = 2 / 4
    ai4 = 2 / (_bpw("Q4_K") / 8)
    balance = EXAMPLE_GFLOPS / EXAMPLE_GBS
    return {"ai32": ai32, "ai4": ai4, "balance": balance, "gbs": EXAMPLE_GBS, "gflops": EXAMPLE_GFLOPS,
            "cap32": ai32 * EXAMPLE_GBS, "cap4": ai4 * EXAMPLE_GBS}


question(
    id="ch13.decode_memory_bound", chapter="ch13", difficulty="easy", tags=("inference", "roofline", "cpu"),
    question="Why is decoding one token at a time memory-bound on a CPU?",
    answer=("Each weight is read once and used for one multiply-add (2 flops). In float32 that is "
            "{ai32:.2f} flop per byte; in Q4_K {ai4:.2f}. A core that streams {gbs:.0f} GB/s and computes "
            "{gflops:.0f} GFLOP/s needs {balance:.0f} flops per byte to be compute-bound, so a float32 matvec "
            "is capped at {cap32:.0f} GFLOP/s by bandwidth, far below the compute roof."),
    follow_ups=("How does batching several sequences change the arithmetic intensity?",
                "Why do the caches not help once the model is larger than L3?"),
    compute=_intensity,
)


def _not_8x():
    fewer = 32 / _bpw("Q4_K")
    f = 0.75  # stated example: share of a float32 decode step spent in the matvecs
    step = 1 / ((1 - f) + f / fewer)
    return {"bpw": _bpw("Q4_K"), "fewer": fewer, "f": f, "step": step}


question(
    id="ch13.not_8x", chapter="ch13", difficulty="medium", tags=("inference", "amdahl", "q4_k"),
    question="4-bit weights are 8x smaller than float32. Why is decoding not 8x faster?",
    answer=("First, Q4_K costs {bpw} bits per weight (scales and mins), so it reads {fewer:.2f}x fewer bytes, "
            "not 8x. Second, only the matvecs shrink: attention over the KV cache, norms, activation "
            "quantization and Python overhead do not. If the matvecs were {f:.0%} of a float32 step and "
            "became {fewer:.2f}x faster, the step would be 1 / ((1 - f) + f / {fewer:.2f}) = {step:.2f}x "
            "faster (Amdahl's law). Third, unpacking 4-bit codes costs instructions: a kernel can become "
            "compute-bound before it reaches the bandwidth roof."),
    follow_ups=("What share of your decode step is outside the linears?",
                "How would a fused attention kernel change the answer?"),
    compute=_not_8x,
)


def _smol_bytes():
    b32 = _model_bytes("F32")
    b4 = _model_bytes("Q4_K_M")
    return {"gb32": b32 / 1e9, "mb4": b4 / 1e6, "gbs": EXAMPLE_GBS,
            "tps32": EXAMPLE_GBS * 1e9 / b32, "tps4": EXAMPLE_GBS * 1e9 / b4}


question(
    id="ch13.ceiling", chapter="ch13", difficulty="easy", tags=("inference", "bandwidth", "smollm2"),
    question="What is the fastest SmolLM2-135M can decode on a core with 20 GB/s, in float32 and in Q4_K_M?",
    answer=("Decoding reads every weight once per token. Float32 SmolLM2-135M is {gb32:.2f} GB, so at {gbs:.0f} "
            "GB/s at most {tps32:.0f} tokens/s; as a Q4_K_M file it is {mb4:.0f} MB, at most {tps4:.0f} tokens/s. "
            "Real runs are slower: attention, norms and overheads are not free, and a single core rarely "
            "reaches the full DRAM bandwidth."),
    follow_ups=("Where does the KV cache enter this budget for long contexts?",),
    compute=_smol_bytes,
)


def _q8_act():
    rng = np.random.default_rng(13)
    x = rng.standard_normal(4096).astype(np.float32)
    qs, d, _ = kernels.quantize_q8_k(x)
    xh = qs.astype(np.float64) * np.repeat(d.astype(np.float64), kernels.QK_K)
    err = np.abs(xh - x).max() / np.abs(x).max()
    return {"err": err, "bound": 1 / (2 * kernels.Q8_MAX), "n": kernels.QK_K}


question(
    id="ch13.q8_activations", chapter="ch13", difficulty="medium", tags=("inference", "kernels", "ggml"),
    question="llama.cpp's CPU backend quantizes the activations to 8 bits before a matvec. Why, and what does it cost?",
    answer=("With both operands as small integers the inner loop is an integer dot product (16-bit or 8-bit "
            "SIMD lanes, vpmaddubsw/vpdpbusd), and the block scales are applied once per block instead of per "
            "weight. The price is a second rounding: each activation moves by at most half a step, "
            "max|x_block| / 254 (blocks of {n} for k-quants). On a Gaussian vector the largest error is "
            "{err:.5f} of max|x| (bound {bound:.5f})."),
    follow_ups=("Why are activations quantized per block rather than per tensor?",),
    compute=_q8_act,
)


def _bsums():
    return {"n": kernels.QK_K, "sub": 32, "nsub": kernels.QK_K // 32}


question(
    id="ch13.bsums", chapter="ch13", difficulty="hard", tags=("kernels", "q4_k", "ggml"),
    question="A Q4_K weight is d * sc * q - dmin * m. How does the kernel avoid a subtraction per weight?",
    answer=("Sum over a sub-block of {sub}: sum (d sc q - dmin m) x = d sc * sum(q x) - dmin m * sum(x). The "
            "second sum does not depend on the weights, so it is computed once per activation vector (the "
            "Q8_K 'bsums') and reused by every row: per super-block of {n} weights the min term costs "
            "{nsub} integer multiply-adds instead of {n} subtractions."),
    follow_ups=("Why does Q6_K need no such term?",),
    compute=_bsums,
)


def _prefill():
    ai = {t: 2 * t / 4 for t in (1, 16, 64)}
    crossover = EXAMPLE_GFLOPS / EXAMPLE_GBS * 4 / 2
    return {"ai1": ai[1], "ai16": ai[16], "ai64": ai[64], "cross": crossover, "balance": EXAMPLE_GFLOPS / EXAMPLE_GBS}


question(
    id="ch13.prefill", chapter="ch13", difficulty="medium", tags=("inference", "prefill", "roofline"),
    question="Why does quantization speed up decoding but hardly prefill?",
    answer=("Prefill multiplies all prompt tokens at once: each float32 weight read serves T tokens, 2T flops "
            "per 4 bytes ({ai1:.1f}, {ai16:.0f}, {ai64:.0f} flop/byte for T = 1, 16, 64). Above T = {cross:.0f} "
            "the example core (balance {balance:.0f} flop/byte) is compute-bound, and fewer bytes no longer "
            "help; dequantizing costs extra work. llama.cpp and qlearn dequantize (or use integer matmuls) for "
            "prefill and keep the fused matvec for decode."),
    follow_ups=("When would an int8 matmul make prefill faster than float32?",),
    compute=_prefill,
)


def _fallback():
    cols = SMOLLM2.dim
    t = gguf_mixes.tensor_type("Q4_K_M", "blk.0.attn_q.weight", 0, SMOLLM2.n_layers, n_cols=cols)
    head = gguf_mixes.tensor_type("Q4_K_M", "token_embd.weight", None, SMOLLM2.n_layers, n_cols=cols,
                                  tied_embeddings=True)
    return {"cols": cols, "rem": cols % kernels.QK_K, "t": t, "head": head, "n": kernels.QK_K, "ffn": SMOLLM2.ffn_dim,
            "bpw": _bpw(t), "bpw4": _bpw("Q4_K")}


question(
    id="ch13.fallback", chapter="ch13", difficulty="medium", tags=("gguf", "k-quants", "smollm2"),
    question="In a Q4_K_M file of SmolLM2-135M most linears are not Q4_K. Why?",
    answer=("K-quant super-blocks hold {n} weights of one row, and SmolLM2's rows have {cols} weights "
            "({cols} mod {n} = {rem}). llama.cpp then falls back to a 32-weight type: {t} ({bpw} bits per "
            "weight instead of {bpw4}) for the attention and up/gate projections, {head} for the tied LM head. "
            "Only ffn_down (rows of {ffn}) gets Q4_K or Q6_K."),
    follow_ups=("What would padding rows to 768 cost?",),
    compute=_fallback,
)


def _kv():
    kv_dim = SMOLLM2.dim // SMOLLM2.n_heads * SMOLLM2.n_kv_heads
    per_tok = 2 * SMOLLM2.n_layers * kv_dim * 4
    return {"kv_dim": kv_dim, "per": per_tok, "ctx": 2048, "mb": per_tok * 2048 / 1e6,
            "w": _model_bytes("Q4_K_M") / 1e6}


question(
    id="ch13.kv_bytes", chapter="ch13", difficulty="medium", tags=("inference", "kv-cache", "smollm2"),
    question="Besides the weights, what does each decode step read, and when does it dominate?",
    answer=("The KV cache: for every past position, each layer's keys and values. SmolLM2 has {kv_dim} "
            "key/value channels per layer (grouped-query attention), so float32 keys and values cost {per} "
            "bytes per token of context. At {ctx} tokens that is {mb:.0f} MB read per step, against {w:.0f} MB "
            "of Q4_K_M weights: at long context the cache, not the weights, sets the speed."),
    follow_ups=("How does a quantized KV cache change this?",),
    compute=_kv,
)


def _q6():
    return {"q6": _bpw("Q6_K"), "q4": _bpw("Q4_K"), "q8": _bpw("Q8_0")}


question(
    id="ch13.q6_slow", chapter="ch13", difficulty="hard", tags=("kernels", "q6_k", "simd"),
    question="Q6_K reads fewer bytes than Q8_0, yet its matvec kernel can be slower. How?",
    answer=("Bytes are not the only cost once a kernel is compute-bound. Q6_K ({q6} bits per weight) stores "
            "each code in two places (4 low bits, 2 high bits) that must be shifted, masked and merged, and "
            "it has 16 sub-block scales per super-block; Q8_0 ({q8} bits) codes are ready-made int8 that go "
            "straight into the multiply. Q4_K ({q4} bits) unpacks one nibble per weight and merges its "
            "eight 6-bit scales into the integer products."),
    follow_ups=("What SIMD instructions make the unpacking cheap in ggml?",),
    compute=_q6,
)


def _threads():
    f = 0.9  # stated example: parallel share of a decode step
    return {"f": f, "two": 1 / ((1 - f) + f / 2), "eight": 1 / ((1 - f) + f / 8)}


question(
    id="ch13.threads", chapter="ch13", difficulty="medium", tags=("inference", "threads", "bandwidth"),
    question="Why does decoding scale poorly beyond a few threads on a desktop CPU?",
    answer=("Decoding is bandwidth-bound, and the cores share one memory system: once the threads together "
            "saturate DRAM bandwidth, more threads only wait. Even with unlimited bandwidth, the serial part "
            "(Python, sampling, synchronisation per layer) limits it: with {f:.0%} of a step parallel, 2 threads "
            "give at most {two:.2f}x and 8 threads {eight:.2f}x."),
    follow_ups=("Why does prefill scale better?",),
    compute=_threads,
)


def _bf16():
    return {"b": 16, "speed": 32 / 16, "q8": 32 / _bpw("Q8_0")}


question(
    id="ch13.bf16", chapter="ch13", difficulty="easy", tags=("inference", "bfloat16", "formats"),
    question="What does bfloat16 buy for CPU inference compared with 8-bit block formats?",
    answer=("bfloat16 halves the bytes of float32 (at most {speed:.0f}x less traffic) with no scales to unpack "
            "and hardware support (AVX512_BF16) for its products; Q8_0 cuts traffic {q8:.2f}x but needs the "
            "activations quantized and per-block scales. For decode, fewer bytes win; for prefill, fast bf16 "
            "matmul units can make bfloat16 the quicker format."),
    follow_ups=("Why is bfloat16 preferred over float16 for training?",),
    compute=_bf16,
)
