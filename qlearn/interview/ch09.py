"""Interview questions of chapter 9, *NF4 and QLoRA*."""

from __future__ import annotations

import numpy as np

from qlearn import nf4
from functools import lru_cache

from qlearn.interview import Quiz, question


BLOCK = 64  # bitsandbytes' default blocksize
INT4_MAX = 15  # codes 0..15 of an asymmetric 4-bit grid
LLOYD_ITERS = 50  # Lloyd-Max iterations for the MSE-optimal 16-level code book
FP16_BITS, FP32_BITS = 16, 32


def _gauss(seed=0):
    return np.random.default_rng(seed).standard_normal((128, 1024)).astype(np.float32)


def _rel(x, xh):
    return float(np.sum((xh.astype(np.float64) - x) ** 2) / np.sum(x.astype(np.float64) ** 2))


def asym_int4(x, block=BLOCK):
    """Min/max asymmetric 4-bit quantization with an fp16 scale and an fp16 min per ``block``
    weights (same 0.5 bit of overhead per weight as NF4's fp32 absmax at block 64).
    x: any shape float32, size divisible by block; returns the dequantized array, same shape."""
    b = x.reshape(-1, block).astype(np.float32)
    lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
    scale = ((hi - lo) / INT4_MAX).astype(np.float16).astype(np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    m = lo.astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((b - m) / scale), 0, INT4_MAX)
    return (q * scale + m).reshape(x.shape)


@lru_cache(maxsize=1)
def _gauss_errors():
    x = _gauss()
    e = {qt: _rel(x, nf4.fake_quantize_4bit(x, BLOCK, qt)) for qt in ("nf4", "int4", "fp4")}
    e["asym"] = _rel(x, asym_int4(x))
    return {"nf4": e["nf4"], "int4": e["int4"], "fp4": e["fp4"], "asym": e["asym"],
            "ratio": e["int4"] / e["nf4"], "asym_ratio": e["nf4"] / e["asym"],
            "bpw_nf4": nf4.bits_per_weight(BLOCK), "bpw_asym": 4 + 2 * FP16_BITS / BLOCK}


question(
    id="ch09.why_nf4", chapter="ch09", difficulty="medium", tags=("nf4", "4-bit", "myths"),
    question="Why does NF4 use quantiles of a normal distribution instead of an even INT4 grid, and does it "
             "beat every evenly spaced 4-bit grid?",
    answer="Weights normalised by their block absmax are roughly normal, so most sit near 0; quantile levels "
           "give each level about the same share of the weights and keep an exact zero (7 negative, 8 "
           "positive levels). On N(0,1) blocks of 64 the relative MSE is {nf4:.4f} for NF4 ({bpw_nf4} bpw), "
           "{int4:.4f} for bitsandbytes' symmetric absmax INT4 ({ratio:.2f}x worse) and {fp4:.4f} for FP4. But "
           "an asymmetric min/max INT4 grid with an fp16 scale and an fp16 min per 64 weights costs the same "
           "{bpw_asym} bpw and reaches {asym:.4f}, {asym_ratio:.2f}x lower than NF4. The comparison that makes "
           "NF4 look best uses only a 15-level symmetric grid. And equal-probability levels are not the "
           "MSE-optimal ones either (Lloyd-Max).",
    follow_ups=("Why is the outermost probability 0.9677 and not 1?",
                "When would NF4 be worse than INT4?"),
    compute=_gauss_errors, chain="nf4-interview",
    quiz=Quiz(prompt="Same 4.5 bits per weight on Gaussian blocks of 64: which has the lowest error?",
              kind="choice", options=("NF4 (fp32 absmax)", "symmetric absmax INT4 (bitsandbytes)",
                                      "asymmetric min/max INT4, fp16 scale and min", "FP4 (e2m1)"),
              correct=2))


@lru_cache(maxsize=1)
def _lloyd():
    """A 16-level code book fitted by Lloyd-Max on absmax-normalised N(0,1) blocks, tested on others."""
    def normalised(seed):
        b = _gauss(seed).reshape(-1, BLOCK).astype(np.float64)
        return b / np.abs(b).max(1, keepdims=True), b

    train, _ = normalised(1)
    v = np.sort(train.ravel())
    code = nf4.NF4_CODE.astype(np.float64).copy()
    for _ in range(LLOYD_ITERS):
        edges = (code[1:] + code[:-1]) / 2
        idx = np.searchsorted(edges, v)
        sums = np.bincount(idx, weights=v, minlength=code.size)
        counts = np.bincount(idx, minlength=code.size)
        code = np.where(counts > 0, sums / np.maximum(counts, 1), code)
    test_n, test = normalised(2)
    absmax = np.abs(test).max(1, keepdims=True)

    def err(c):
        edges = (c[1:] + c[:-1]) / 2
        q = c[np.searchsorted(edges, test_n.ravel())].reshape(test_n.shape) * absmax
        return float(np.sum((q - test) ** 2) / np.sum(test ** 2))

    e_nf4, e_ll = err(nf4.NF4_CODE.astype(np.float64)), err(code)
    return {"nf4": e_nf4, "lloyd": e_ll, "gain": e_nf4 / e_ll, "iters": LLOYD_ITERS,
            "inner_nf4": float(nf4.NF4_CODE[8]), "inner_ll": float(code[8]),
            "outer_ll": float(code[-2]), "outer_nf4": float(nf4.NF4_CODE[-2])}


question(
    id="ch09.lloyd_max", chapter="ch09", difficulty="hard", tags=("nf4", "theory", "non-uniform"),
    question="NF4 is called 'information-theoretically optimal' for normal weights. Optimal for what, and what "
             "would an MSE-optimal 4-bit code book look like?",
    answer="NF4's levels are quantiles: each gets an equal share of the probability mass (maximum entropy of "
           "the codes). Minimum squared error needs something else: each level at the mean of its cell, each "
           "boundary halfway between levels (Lloyd-Max). Fitting 16 levels by {iters} Lloyd iterations on "
           "absmax-normalised N(0,1) blocks of 64 and testing on fresh blocks: relative MSE {lloyd:.4f} vs "
           "NF4's {nf4:.4f} ({gain:.2f}x lower) at the same storage. The levels move (first positive level "
           "{inner_ll:.3f} vs NF4's {inner_nf4:.3f}; second-largest {outer_ll:.3f} vs {outer_nf4:.3f}). The gain "
           "is small: NF4 is a good code book, just not the optimum it is sometimes called.",
    follow_ups=("Why might equal-mass levels still be preferred for fine-tuning through the quantized weights?", "Why would a code book fitted on Gaussian data fail on real weights?"),
    compute=_lloyd, chain="nf4-interview", after="ch09.why_nf4")


question(
    id="ch09.double_quant", chapter="ch09", difficulty="medium",
    tags=("nf4", "double-quantization", "memory"),
    question="QLoRA's double quantization is often summarized as 'FP32 to FP8'. What exactly is "
             "quantized, and how many bits per parameter does it save with blocks of 64?",
    answer="Only the per-block absmax constants are quantized, not the weights. After their "
           "mean is subtracted they become 8-bit codes of the signed dynamic map (not a float8 "
           "format), with one float32 scale per 256 blocks. The constants' cost falls from "
           "{before:.3f} to {after:.4f} bits per parameter, a saving of {saved:.4f}, which is "
           "{gib65:.2f} GiB on a 65B model.",
    follow_ups=("Why subtract the mean first?",
                "Why do the nested codes differ between bitsandbytes' CPU and GPU?"),
    compute=lambda: {"before": nf4.bits_per_weight(64) - 4,
                     "after": nf4.bits_per_weight(64, True) - 4,
                     "saved": nf4.bits_per_weight(64) - nf4.bits_per_weight(64, True),
                     "gib65": (nf4.bits_per_weight(64) - nf4.bits_per_weight(64, True))
                              * 65e9 / 8 / 2**30})

question(
    id="ch09.qlora_memory", chapter="ch09", difficulty="medium", tags=("qlora", "lora", "memory"),
    question="Estimate the weight memory of QLoRA fine-tuning of a 7B model with NF4, double "
             "quantization, and 40M LoRA parameters trained with AdamW.",
    answer="Base: {bpw:.3f} bits per weight x 7e9 = {base_gib:.2f} GiB. LoRA: 4 bytes of weight, "
           "4 of gradient and 8 of AdamW moments per trainable parameter, 16 x 40e6 = "
           "{lora_gib:.2f} GiB. Total about {total_gib:.2f} GiB before activations, against "
           "{fp16_gib:.1f} GiB just to hold the weights in fp16.",
    follow_ups=("Where does the rest of the memory go in practice?",
                "Why does the LoRA B matrix start at zero?"),
    compute=lambda: {"bpw": nf4.bits_per_weight(64, True),
                     "base_gib": nf4.bits_per_weight(64, True) * 7e9 / 8 / 2**30,
                     "lora_gib": 16 * 40e6 / 2**30,
                     "total_gib": nf4.bits_per_weight(64, True) * 7e9 / 8 / 2**30
                                  + 16 * 40e6 / 2**30,
                     "fp16_gib": 2 * 7e9 / 2**30})

question(
    id="ch09.ties", chapter="ch09", difficulty="hard", tags=("nf4", "bit-exact", "bitsandbytes"),
    question="You reimplement NF4 quantization and almost every byte matches bitsandbytes, but "
             "a few do not. What details do you check?",
    answer="Scaling by x * (1/absmax) instead of x / absmax (the two round differently). The "
           "tie rule: bitsandbytes counts midpoints strictly below the value, so a value exactly "
           "on a midpoint goes to the lower code; all {n_mid} NF4 midpoints are float32 means "
           "of adjacent levels. High-nibble-first packing. A short last block, which is divided "
           "and stores its clamped absmax. FP4's duplicated zero, and on the CPU the "
           "lookup-table nested quantizer, which differs from an exact nearest search.",
    follow_ups=("How would you build test inputs that sit exactly on the midpoints?",),
    compute=lambda: {"n_mid": int(nf4.NF4_CODE.size - 1)})


# --- more questions ------------------------------------------------------------------------

BLOCKSIZES = (32, 64, 128, 256)
LORA_RANK = 8
GPU_48GB = 48  # "a 48 GB GPU": GPU memory is sold in binary units, so 48 GiB
QLORA_RANK = 64  # the QLoRA paper's rank, on every linear of every block
LORA_TRAIN_BYTES = 16  # fp32 LoRA weight 4 + gradient 4 + two AdamW moments 8
LLAMA1_65B = dict(hidden=8192, intermediate=22016, layers=80, heads=64, kv_heads=64, vocab=32000)  # its config


def _blocksizes():
    x = _gauss()
    out = {}
    for bs in BLOCKSIZES:
        out[f"e{bs}"] = _rel(x, nf4.fake_quantize_4bit(x, bs, "nf4"))
        out[f"b{bs}"] = nf4.bits_per_weight(bs)
        out[f"d{bs}"] = nf4.bits_per_weight(bs, True)
    return out


question(
    id="ch09.blocksize", chapter="ch09", difficulty="medium", tags=("nf4", "block size", "storage"),
    question="bitsandbytes quantizes NF4 in blocks of 64. What do smaller or larger blocks change?",
    answer="Error against storage. On N(0,1) data: block 32 relative MSE {e32:.4f} at {b32:.3f} bpw ({d32:.3f} "
           "with double quantization), 64: {e64:.4f} at {b64:.3f} ({d64:.3f}), 128: {e128:.4f} at {b128:.3f} "
           "({d128:.3f}), 256: {e256:.4f} at {b256:.3f} ({d256:.3f}). A larger block's absmax is a more extreme "
           "sample, so the bulk of the weights uses fewer levels; double quantization is what makes 64 "
           "affordable.",
    follow_ups=("Why is the gain from 64 to 32 small on Gaussian data but larger on real weights with outliers?", "Why is 64 the default rather than 32?"),
    compute=_blocksizes)


def _lora_params():
    from qlearn import memory

    m = memory.MODELS["Llama-2-7B"]
    d = m.hidden
    per = LORA_RANK * (d + d)  # A: r x d_in, B: d_out x r for a d x d projection
    n_qv = 2 * m.layers * per
    kv = m.kv_heads * m.head_dim
    all_lin = m.layers * LORA_RANK * ((d + d) * 2 + (d + kv) * 2 + 3 * (d + m.intermediate))
    return {"r": LORA_RANK, "per": per, "qv": n_qv / 1e6, "qv_pct": 100 * n_qv / m.n_params,
            "all": all_lin / 1e6, "all_pct": 100 * all_lin / m.n_params}


question(
    id="ch09.lora_params", chapter="ch09", difficulty="easy", tags=("lora", "qlora", "memory"),
    question="How many trainable parameters does LoRA rank 8 add to Llama-2-7B, and why does B start at zero?",
    answer="Each adapted d_out x d_in weight gets A (r x d_in) and B (d_out x r): for a 4096 x 4096 projection "
           "that is {per} parameters at r = {r}. On q_proj and v_proj of all layers: {qv:.2f} M ({qv_pct:.3f} % "
           "of the model); on all seven linears of every layer: {all:.1f} M ({all_pct:.2f} %). B = 0 makes "
           "the adapter's output BA x zero at step 0, so training starts exactly from the (quantized) base "
           "model, while A's random init gives B's gradient something to work with.",
    follow_ups=("What does the alpha / r scaling do, and why does it let you change r without retuning the "
                "learning rate?",),
    compute=_lora_params)


def _qlora65():
    from qlearn import memory

    m = memory.ModelConfig("LLaMA-65B", max_context=2048, tied=False, **LLAMA1_65B)
    n = m.n_params
    dq = memory.weight_memory_bytes(n, "NF4 + double quant")
    f16 = memory.weight_memory_bytes(n, "FP16")
    budget = GPU_48GB * memory.BYTES_PER_GIB
    d, f = m.hidden, m.intermediate
    lora = m.layers * QLORA_RANK * (4 * 2 * d + 3 * (d + f))
    return {"lora_m": lora / 1e6, "lora_gib": memory.gib(lora * LORA_TRAIN_BYTES), "rank": QLORA_RANK,"n": n / 1e9, "dq_gib": memory.gib(dq), "f16_gib": memory.gib(f16), "gpu": GPU_48GB,
            "left": memory.gib(budget - dq),
            "bpw": memory.bits_per_weight("NF4 + double quant")}


question(
    id="ch09.qlora_65b", chapter="ch09", difficulty="hard", tags=("qlora", "memory", "myths"),
    question="QLoRA's headline: fine-tune a 65B model on one 48 GB GPU. Check the arithmetic.",
    answer="LLaMA-65B has {n:.1f} B parameters (from its config). In fp16 the weights alone are {f16_gib:.0f} "
           "GiB. In NF4 with double quantization ({bpw:.3f} bpw) they are {dq_gib:.1f} GiB. A '48 GB' card "
           "(GPU memory is counted in binary units: {gpu} GiB) leaves {left:.1f} GiB for the LoRA adapters "
           "(rank {rank} on every linear: {lora_m:.0f} M parameters, {lora_gib:.2f} GiB with fp32 gradients and "
           "AdamW states), the activations of the forward and backward pass (with gradient "
           "checkpointing) and memory spikes, which paged optimizers move to CPU memory. So it fits, with "
           "little margin; at long sequence lengths it does not.",
    follow_ups=("Which term grows with the sequence length, and by how much per token?",),
    compute=_qlora65, chain="nf4-interview", after="ch09.lloyd_max")


@lru_cache(maxsize=1)
def _tails():
    rng = np.random.default_rng(4)
    x = rng.standard_t(3, (128, 1024)).astype(np.float32)
    e = {qt: _rel(x, nf4.fake_quantize_4bit(x, BLOCK, qt)) for qt in ("nf4", "fp4", "int4")}
    return e | {"asym": _rel(x, asym_int4(x))}


question(
    id="ch09.heavy_tails", chapter="ch09", difficulty="hard", tags=("nf4", "fp4", "outliers"),
    question="NF4 assumes normal weights. What happens on heavy-tailed blocks, and which 4-bit code wins there?",
    answer="A heavy tail puts one large value in many blocks, so after absmax scaling the rest crowd near 0 "
           "even more than for a Gaussian. On Student-t (3 degrees of freedom) blocks of 64: NF4 {nf4:.4f}, "
           "FP4 {fp4:.4f}, symmetric INT4 {int4:.4f}, asymmetric min/max INT4 {asym:.4f}. NF4 and the "
           "asymmetric grid stay close; FP4 and symmetric INT4 lose the most. Measure on your own weights "
           "before assuming the normal model holds.",
    follow_ups=("How would you check whether a model's weights are close to normal per block?", "Would per-block asymmetric NF4 help here?"),
    compute=_tails)
