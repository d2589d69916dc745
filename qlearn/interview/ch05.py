"""Interview questions of chapter 5, *Weight-only PTQ*; every number is computed by qlearn."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from qlearn import gptq
from qlearn.interview import Quiz, question

SCALE_BITS = 16


def _bpw(bits, gs, sym):
    return bits + (SCALE_BITS + (0 if sym else bits)) / gs


SPIKE_RATE = 1e-3  # the chapter's layer: one weight in a thousand ...
SPIKE_GAIN = 8.0  # ... multiplied by 8
ROW_SPREAD = 0.5  # log-normal spread of the output rows' magnitudes


@lru_cache(maxsize=1)
def _chapter_layer():
    """The chapter's layer: gptq.synthetic_layer's W with log-normal row scales and 0.1 % spikes x8,
    its inputs X and their Gram matrix X^T X (float64)."""
    W0, X, _ = gptq.synthetic_layer()
    rng = np.random.default_rng(5)
    row_scale = np.exp(ROW_SPREAD * rng.standard_normal((W0.shape[0], 1))).astype(np.float32)
    spikes = rng.random(W0.shape) < SPIKE_RATE
    W = (W0 * row_scale * np.where(spikes, SPIKE_GAIN, 1.0)).astype(np.float32)
    gram = X.astype(np.float64).T @ X.astype(np.float64)
    return torch.from_numpy(W), X, gram, int(spikes.sum())


def _rtn(W, bits, granularity, group_size=128, sym=True):
    if granularity == "per_tensor":
        return gptq.rtn_quantize(W.reshape(1, -1), bits, -1, sym).Q.reshape(W.shape)
    return gptq.rtn_quantize(W, bits, -1 if granularity == "per_channel" else group_size, sym).Q


def _weight_err(W, Q):
    return float(((W.double() - Q.double()) ** 2).sum() / (W.double() ** 2).sum())


@lru_cache(maxsize=1)
def _granularity():
    W, _, gram, n_spikes = _chapter_layer()
    out = {"n_spikes": n_spikes}
    for key, g in (("tensor", "per_tensor"), ("channel", "per_channel"), ("group", "per_group")):
        Q = _rtn(W, 4, g)
        out[key] = gptq.relative_output_error(None, W, Q, gram=gram)
        out["w_" + key] = _weight_err(W, Q)
    out["ratio"] = out["tensor"] / out["group"]
    return out


question(id="ch05.group_cost", chapter="ch05", difficulty="easy", tags=("rtn", "group size", "storage"),
         question="How many bits per weight does 4-bit asymmetric quantization with group size 128 really cost, "
                  "and with group size 32?",
         answer="Each group stores an fp16 scale and a 4-bit zero: 4 + 20/128 = {g128:.3f} bits per weight for "
                "g128, {g32:.3f} for g32 (symmetric g128: {g128s:.3f}).",
         follow_ups=("Why do kernels prefer power-of-two group sizes?", "What does an fp16 zero point instead of a 4-bit one cost at g128?"),
         quiz=Quiz(prompt="Bits per weight of 4-bit codes with an fp16 scale and a 4-bit zero per 128 weights?", value="g128", rel_tol=0.002, unit="bpw"),
    compute=lambda: {"g128": _bpw(4, 128, False), "g32": _bpw(4, 32, False), "g128s": _bpw(4, 128, True)})

question(id="ch05.granularity", chapter="ch05", difficulty="medium", tags=("rtn", "outliers"),
         question="Why does one large weight hurt per-tensor quantization so much more than per-group?",
         answer="The scale is set by the absmax of everything sharing it; one spiked weight stretches the grid so "
                "all other weights sharing its scale land on few levels. On the chapter's layer ({n_spikes} weights "
                "x8, rows of log-normal magnitude), 4-bit symmetric RTN gives relative output error {tensor:.5f} per "
                "tensor, {channel:.5f} per channel and {group:.5f} per group of 128 ({ratio:.1f}x lower than per "
                "tensor): a spike spoils the whole matrix, one row, or 128 weights.",
         follow_ups=("What does clipping the range trade off?", "Which granularity would you use for the embedding matrix?"),
         compute=_granularity, chain="weight-ptq")

question(id="ch05.dynamic", chapter="ch05", difficulty="easy", tags=("dynamic quantization", "activations"),
         question="What is dynamic quantization and when would you use it instead of static?",
         answer="Activations are quantized at run time with scales computed from the current batch or token, so no "
                "calibration is needed and each token uses its own range; the cost is computing absmax on the fly. "
                "Static quantization fixes activation scales from calibration data ahead of time (cheaper, but one "
                "scale must cover the loudest token). Weight-only schemes (GPTQ, AWQ at {bpw:.3f} bits per weight "
                "for 4-bit g128 asymmetric) do not quantize activations at all.",
         follow_ups=("Why is dynamic quantization a natural fit for LSTMs and linears on CPU?",
                     "What does per-token dynamic quantization cost on a GPU?"),
         compute=lambda: {"bpw": _bpw(4, 128, False)})


# --- more questions ------------------------------------------------------------------------

GROUP_SIZES = (32, 64, 128, 256)
DYN_IN, DYN_OUT, DYN_TOKENS = 256, 64, 32  # the dynamic-quantization probe layer
DYN_ROUNDING = 1e-5  # relative difference that counts as float32 rounding


@lru_cache(maxsize=1)
def _bits_sweep():
    W, _, gram, _ = _chapter_layer()
    out = {}
    for bits in (8, 4, 3, 2):
        out[f"b{bits}"] = gptq.relative_output_error(None, W, _rtn(W, bits, "per_group"), gram=gram)
        out[f"a{bits}"] = gptq.relative_output_error(None, W, _rtn(W, bits, "per_group", sym=False), gram=gram)
    out["r84"] = (out["b4"] / out["b8"]) ** 0.25
    out["r43"] = out["b3"] / out["b4"]
    out["r32"] = out["b2"] / out["b3"]
    return out


question(id="ch05.bits_cliff", chapter="ch05", difficulty="medium", tags=("rtn", "bits", "quality"),
         question="How does round-to-nearest error grow as you go from 8 to 4, 3 and 2 bits?",
         answer="By a roughly constant factor of about 4 per bit removed: each bit halves the step and the error "
                "power goes with the step squared. On the chapter's layer, symmetric RTN with groups of 128: "
                "relative output error {b8:.2e} at 8 bits, {b4:.2e} at 4 ({r84:.1f}x per bit from 8), {b3:.2e} at 3 "
                "({r43:.1f}x), {b2:.2e} at 2 ({r32:.1f}x). The factor stays; what changes is where the error "
                "crosses what the model tolerates, which is why plain RTN is fine at 8 and usually 4 bits and "
                "GPTQ/AWQ or QAT matter below.",
         follow_ups=("Why is the ratio per bit about 4 in theory?", "What does a symmetric 2-bit grid contain?"),
         compute=_bits_sweep)


question(id="ch05.sym_asym_low_bits", chapter="ch05", difficulty="medium", tags=("rtn", "symmetric", "zero-point"),
         question="For weights, does an asymmetric grid help at 4 bits? At 3 and 2?",
         answer="More as the bits drop. Symmetric vs asymmetric RTN, groups of 128, on the chapter's layer: "
                "4 bits {b4:.2e} vs {a4:.2e}; 3 bits {b3:.2e} vs {a3:.2e}; 2 bits {b2:.2e} vs {a2:.2e}. A "
                "symmetric b-bit grid uses 2^b - 1 levels and centres them on 0; a group's min and max are "
                "rarely symmetric, and with only 3 or 4 levels every wasted level hurts.",
         follow_ups=("What does the zero point cost in storage at g128?", "Why do GPTQ checkpoints often use sym=True anyway?"),
         compute=_bits_sweep)


@lru_cache(maxsize=1)
def _weight_vs_output():
    W, X, gram, _ = _chapter_layer()
    rtn = _rtn(W, 4, "per_group")
    gq = gptq.gptq_quantize(W, gptq.hessian(X), 4, 128).Q
    return {"w_rtn": _weight_err(W, rtn), "w_gptq": _weight_err(W, gq),
            "o_rtn": gptq.relative_output_error(None, W, rtn, gram=gram),
            "o_gptq": gptq.relative_output_error(None, W, gq, gram=gram)}


question(id="ch05.weight_vs_output", chapter="ch05", difficulty="hard", tags=("rtn", "metrics", "gptq"),
         question="Why judge a weight quantizer by the layer's output error rather than the weight error?",
         answer="Because they can disagree. The output error is ||X (W - Q)^T||^2 = sum over rows of "
                "(w - q) X^T X (w - q)^T: errors that the inputs cancel or never excite cost nothing. On the "
                "chapter's layer at 4-bit g128, RTN has relative weight error {w_rtn:.5f} and output error "
                "{o_rtn:.5f}; GPTQ has a LARGER weight error, {w_gptq:.5f}, and a smaller output error, "
                "{o_gptq:.5f}, because it moves weights off their nearest grid point to cancel each other's "
                "output error. A weight-space metric would rank them the wrong way round.",
         follow_ups=("What is the cheapest approximation of X^T X that still helps (llama.cpp's imatrix)?", "When would the two metrics rank two quantizers the same way?"),
         compute=_weight_vs_output, chain="weight-ptq", after="ch05.granularity")


def _dynamic_activation_bits():
    """Run torch's dynamic int8 Linear and emulate it with 7-bit and 8-bit activation grids."""
    import warnings

    torch.manual_seed(0)
    lin = torch.nn.Linear(DYN_IN, DYN_OUT)
    x = torch.randn(DYN_TOKENS, DYN_IN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                      dtype=torch.qint8)[0]
        with torch.no_grad():
            y = qlin(x)
            W_hat = qlin.weight().dequantize()
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    out = {"engine": torch.backends.quantized.engine}
    for bits in (7, 8):
        levels = 2 ** bits
        s = (hi - lo) / (levels - 1)
        z = round(-lo / s)
        x_hat = (torch.clamp(torch.round(x / s) + z, 0, levels - 1) - z) * s
        with torch.no_grad():
            out[f"d{bits}"] = float((x_hat @ W_hat.T + lin.bias - y).abs().max() / y.abs().max())
    if not out["d7"] < DYN_ROUNDING:
        raise ValueError(f"the 7-bit emulation differs by {out['d7']:.1e}: torch's kernel changed")
    out["bound"] = DYN_ROUNDING
    return out


question(id="ch05.reduce_range", chapter="ch05", difficulty="hard", tags=("dynamic quantization", "pytorch", "int8"),
         question="torch.ao.quantization.quantize_dynamic makes an 'int8' Linear. How many bits do its "
                  "activations really get on x86, and how would you prove it?",
         answer="Seven. The dynamic Linear calls the kernel with reduce_range=True: activations are quint8 "
                "with codes 0..127. Proof by emulation: quantize the input per tensor with a min/max grid of "
                "2^7 levels, multiply by the dequantized int8 weight, add the bias: the largest difference from "
                "torch's output ({engine} engine) is below {bound:.0e} of the output's range (float32 rounding); "
                "with 2^8 levels it is {d8:.1e} of it. The reason is "
                "fbgemm's uint8 x int8 instruction (vpmaddubsw), which adds pairs of products into int16 and "
                "could saturate with full-range activations.",
         follow_ups=("Which backends do not need reduce_range?", "What does losing that bit cost in SQNR?"),
         compute=_dynamic_activation_bits)


@lru_cache(maxsize=1)
def _group_sweep():
    W, _, gram, _ = _chapter_layer()
    out = {"c4": gptq.relative_output_error(None, W, _rtn(W, 4, "per_channel", sym=False), gram=gram),
           "c4_bpw": _bpw(4, W.shape[1], False)}
    for gs in GROUP_SIZES:
        out[f"g{gs}"] = gptq.relative_output_error(None, W, _rtn(W, 3, "per_group", gs, sym=False), gram=gram)
        out[f"g{gs}_bpw"] = _bpw(3, gs, False)
    return out


question(id="ch05.group_vs_bits", chapter="ch05", difficulty="hard", tags=("rtn", "group size", "storage"),
         question="At about the same storage, is it better to spend bits on more code bits or on smaller groups?",
         answer="Measure it per layer. On the chapter's layer, asymmetric RTN: 4-bit per channel costs "
                "{c4_bpw:.3f} bpw for output error {c4:.2e}; 3-bit with groups of 32 costs {g32_bpw:.3f} bpw for "
                "{g32:.2e}, g64 {g64_bpw:.3f} bpw for {g64:.2e}, g128 {g128_bpw:.3f} bpw for {g128:.2e}, g256 "
                "{g256_bpw:.3f} bpw for {g256:.2e}. Spikes and uneven rows favour small groups; smooth weights "
                "favour code bits. K-quants answer both: small sub-blocks with cheap 6-bit scales.",
         follow_ups=("How do the scales themselves get cheaper in Q4_K?", "How would you decide per layer instead of for the whole model?"),
         compute=_group_sweep)


def _int4_storage():
    from qlearn import memory

    m = memory.MODELS["Llama-2-7B"]
    fmt = "INT4-g128 (4-bit zero)"
    return {"bpw": memory.bits_per_weight(fmt), "gib": memory.gib(memory.weight_memory_bytes(m.n_params, fmt)),
            "f16": memory.gib(memory.weight_memory_bytes(m.n_params, "FP16"))}


question(id="ch05.int4_storage", chapter="ch05", difficulty="easy", tags=("storage", "int4", "memory"),
         question="How is a 4-bit weight stored in memory, and what does Llama-2-7B weigh at 4-bit g128?",
         answer="Two codes per byte (or eight per int32 word in GPTQ checkpoints), plus per-group scales and zero "
                "points; a kernel unpacks and dequantizes on the fly. With an fp16 scale and a 4-bit zero per 128 "
                "weights: {bpw:.4f} bits per weight, {gib:.2f} GiB for Llama-2-7B (every weight in that format), "
                "against {f16:.2f} GiB in FP16.",
         follow_ups=("Why do some layouts interleave the nibbles instead of storing them in order?", "How many bytes does one group of 128 weights take, scales included?"),
         compute=_int4_storage)
