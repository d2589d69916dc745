"""Interview questions of chapter 11, quantization-aware training. Every number is computed by
qlearn."""
from __future__ import annotations

import math

import numpy as np
import torch

from qlearn import qat, uniform
from qlearn.interview import question

_SEED = 11


def _round_grad():
    x = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    h = 1e-4
    fd = (torch.round((x + h) / 0.25) - torch.round((x - h) / 0.25)) * 0.25 / (2 * h)
    return {"zero": float((fd == 0).double().mean()), "n": x.numel()}


question(
    id="ch11.ste", chapter="ch11", difficulty="easy", tags=("qat", "ste", "gradients"),
    question="Why can't you back-propagate through round(), and what does the straight-through "
             "estimator do instead?",
    answer=("round() is a staircase: its derivative is 0 on every step and undefined at the "
            "jumps. Of {n} evenly spaced points on [-1, 1] with a step of 0.25, a finite-difference "
            "derivative is exactly 0 at {zero:.1%}, so every weight would be told not to move. "
            "The STE uses the identity as the backward pass of round(): d x_hat / d x = 1 where "
            "the code lies inside [qmin, qmax], 0 where it was clamped. It is a surrogate, not "
            "the derivative (gradcheck rejects it)."),
    follow_ups=("Why zero the gradient of clamped values rather than pass it through?",
                "What does the STE do to the gradient of the scale?"),
    compute=_round_grad,
)


def _clamped_share():
    rng = np.random.default_rng(_SEED)
    w = rng.standard_normal(100_000).astype(np.float32)
    s_absmax = float(np.abs(w).max()) / 7  # 4-bit symmetric: qmax 7
    s_clip = 0.5 * s_absmax

    def clamped(s):  # the unclamped code round(w / s) falls outside [-7, 7]
        return float((np.abs(np.rint(w / np.float32(s))) > 7).mean())
    return {"share_absmax": clamped(s_absmax), "share_clip": clamped(s_clip)}


question(
    id="ch11.clamped", chapter="ch11", difficulty="medium", tags=("qat", "ste", "clipping"),
    question="With a dynamic absmax scale, which weights get a zero STE gradient? And with a "
             "learned or clipped scale?",
    answer=("With absmax, none: the largest weight defines the range, so every code is inside "
            "and the STE zeroes the gradient of {share_absmax:.0%} of the weights. With a scale at half "
            "the absmax (4 bits, 100 000 Gaussian weights), {share_clip:.3%} of the weights fall "
            "beyond the range, get clamped and receive no gradient from the STE; LSQ still "
            "sends them a gradient through the step size (+-Q_P)."),
    follow_ups=("Is a zero gradient for clamped weights a problem in practice?",),
    compute=_clamped_share,
)


def _lsq_g():
    n_tensor, n_group = 4096 * 4096, 128
    q_p = uniform.code_range(4, mapping="symmetric")[1]
    return {"q_p": q_p, "g_tensor": 1 / math.sqrt(n_tensor * q_p),
            "g_group": 1 / math.sqrt(n_group * q_p)}


question(
    id="ch11.lsq_grad_scale", chapter="ch11", difficulty="medium", tags=("qat", "lsq"),
    question="LSQ multiplies the step size's gradient by g = 1/sqrt(N Q_P). What is g for a "
             "4096 x 4096 weight at 4 bits with one step, and with one step per group of 128?",
    answer=("Q_P = {q_p} on the restricted 4-bit grid. One step for 4096*4096 weights: "
            "g = {g_tensor:.3e}; one step per 128 weights: g = {g_group:.4f}. The step's "
            "gradient sums over all N weights it scales, so without g it would be about "
            "sqrt(N) times too large relative to the weights' updates (with SGD; Adam "
            "normalizes most of it away)."),
    follow_ups=("Why sqrt(N) and not N?", "Why does the paper include Q_P?"),
    compute=_lsq_g,
)


def _lsq_formula():
    v = torch.tensor([-4.0, -1.3, 0.4, 2.6, 3.0])
    g = qat.lsq_step_gradient(v, torch.tensor(1.0), 3, 3)
    return {"vals": ", ".join(f"{a:g} -> {b:+.1f}" for a, b in zip(v.tolist(), g.tolist()))}


question(
    id="ch11.lsq_formula", chapter="ch11", difficulty="hard", tags=("qat", "lsq", "gradients"),
    question="Derive LSQ's gradient of x_hat = round(clamp(x/s, -Q_N, Q_P)) * s with respect to "
             "the step s.",
    answer=("Treat round as the identity (STE). Inside the range x_hat = s * round(x/s), so "
            "d x_hat / d s = round(x/s) + s * d(x/s)/ds = round(x/s) - x/s; below the range "
            "x_hat = -Q_N s, giving -Q_N; above it Q_P. At 3 bits (Q = 3), s = 1, for "
            "x/s: {vals}. The inner term is the signed rounding error: it pushes s to "
            "shrink or grow the error of each weight, and clamped weights pull s outwards."),
    follow_ups=("Why is the inner term not zero on average?",),
    compute=_lsq_formula,
)


def _levels():
    out = {}
    for m in ("symmetric", "symmetric_offset", "asymmetric"):
        lo, hi = uniform.code_range(2, mapping=m)
        out[m.replace("_", "")] = hi - lo + 1
    return out


question(
    id="ch11.two_bit_grids", chapter="ch11", difficulty="easy", tags=("qat", "grids", "ternary"),
    question="How many levels does a '2-bit symmetric' grid have?",
    answer=("It depends on the mapping. The restricted symmetric grid (codes -1..1, zero point "
            "0) has {symmetric} levels: it is a ternary grid, like BitNet b1.58's. GPTQ's "
            "symmetric_offset grid has {symmetricoffset} and the asymmetric grid "
            "{asymmetric}. On qlearn-tiny, RTN on the 4-level grids costs far less perplexity "
            "than on the 3-level one (chapter 11 measures both)."),
    follow_ups=("Why do many toolkits restrict the symmetric range?",),
    compute=_levels,
)


def _ternary_bits():
    n = 7e9
    return {"log2_3": math.log2(3), "pack5": 8 / 5, "gib_fp16": n * 2 / 2**30,
            "gib_tern": n * (8 / 5) / 8 / 2**30}


question(
    id="ch11.bitnet_bits", chapter="ch11", difficulty="easy", tags=("bitnet", "ternary", "memory"),
    question="Why is BitNet b1.58 called '1.58 bits', and what does a 7B ternary model weigh?",
    answer=("A ternary digit carries log2(3) = {log2_3:.3f} bits. Packing 5 trits in a byte "
            "(3^5 = 243 <= 256) costs {pack5:.1f} bits per weight, so 7e9 weights take "
            "{gib_tern:.2f} GiB against {gib_fp16:.1f} GiB in fp16, plus one scale per tensor "
            "and the embeddings, which stay in higher precision."),
    follow_ups=("What does BitNet do with the activations?", "Why does 2-bit packing waste?"),
    compute=_ternary_bits,
)


def _ternarize_example():
    w = np.array([[0.5, -1.5, 0.05], [2.0, -0.1, 0.0]], np.float32)
    q = qat.ternarize(w)
    return {"gamma": float(q.scale.ravel()[0]), "codes": q.codes.tolist()}


question(
    id="ch11.ternarize", chapter="ch11", difficulty="medium", tags=("bitnet", "ternary"),
    question="Ternarize W = [[0.5, -1.5, 0.05], [2.0, -0.1, 0.0]] the BitNet b1.58 way.",
    answer=("gamma = mean|W| = {gamma:.4f}; codes = clamp(round(W / gamma), -1, 1) = {codes}; "
            "W_hat = gamma * codes. The absmean (not absmax) scale puts the rounding threshold "
            "at gamma / 2, so small weights become 0 and large ones saturate at +-gamma."),
    follow_ups=("Why absmean rather than absmax for ternary weights?",),
    compute=_ternarize_example,
)


def _zeros_share():
    rng = np.random.default_rng(_SEED)
    w = rng.standard_normal((256, 768)).astype(np.float32)
    absmax = uniform.quantize(w, 2, block_size=(1, 768), mapping="symmetric")
    absmean = qat.ternarize(w)
    return {"zero_absmax": float((absmax.codes == 0).mean()),
            "zero_absmean": float((absmean.codes == 0).mean()),
            "sqnr_absmax": uniform.sqnr_db(w, uniform.dequantize(absmax)),
            "sqnr_absmean": uniform.sqnr_db(w, uniform.dequantize(absmean))}


question(
    id="ch11.absmax_vs_absmean", chapter="ch11", difficulty="medium",
    tags=("ternary", "scale", "ptq"),
    question="On Gaussian weights, compare a ternary grid scaled by each row's absmax with "
             "BitNet's absmean scale.",
    answer=("With the absmax (per row, 256 x 768 Gaussian weights) {zero_absmax:.0%} of the "
            "weights round to 0 and the SQNR is {sqnr_absmax:.1f} dB; with the absmean "
            "{zero_absmean:.0%} are zero and the SQNR is {sqnr_absmean:.1f} dB. A scale rule "
            "alone, with no training, moves a 3-level grid a long way: check a better PTQ "
            "before concluding that QAT is needed."),
    follow_ups=("Which scale minimizes the MSE for a Gaussian at 3 levels?",),
    compute=_zeros_share,
)


def _qat_memory():
    n = 7e9
    return {"bytes": 4 + 4 + 8, "gib": n * 16 / 2**30, "gib_rtn": n * 2 / 2**30}


question(
    id="ch11.qat_cost", chapter="ch11", difficulty="medium", tags=("qat", "memory", "cost"),
    question="What does QAT of a 7B model cost in memory compared with RTN?",
    answer=("QAT keeps fp32 latent weights, their gradients and AdamW's two moments: "
            "{bytes} bytes per parameter, {gib:.0f} GiB for 7e9 parameters before "
            "activations, against reading {gib_rtn:.0f} GiB of fp16 weights for RTN. That is "
            "why LLM QAT is done block by block (EfficientQAT's Block-AP) or with adapters, "
            "and in short runs: it is fine-tuning, not retraining."),
    follow_ups=("How does block-wise training reduce it?", "Where do activations add to it?"),
    compute=_qat_memory,
)


def _convert_bytes():
    out_f, in_f = 256, 768
    codes = out_f * in_f * 2 / 8
    scales = out_f * 4
    return {"codes": codes, "scales": scales, "fp32": out_f * in_f * 4,
            "ratio": out_f * in_f * 4 / (codes + scales)}


question(
    id="ch11.convert", chapter="ch11", difficulty="easy", tags=("qat", "deployment"),
    question="After QAT, what do you ship, and how do you know it behaves like the trained model?",
    answer=("The integer codes and scales of the last forward pass: convert() quantizes the "
            "latent weights on the exact grid the fake quantizer used (uniform.quantize_affine), "
            "so the dequantized weights equal the fake-quantized ones bit for bit and the "
            "perplexity is identical. For a 256 x 768 layer at 2 bits per channel: {codes:.0f} "
            "bytes of packed codes + {scales} bytes of fp32 scales, {ratio:.1f}x smaller than "
            "{fp32} bytes of fp32."),
    follow_ups=("What breaks if the deployment kernel rounds differently from training?",),
    compute=_convert_bytes,
)


def _fake_quant_forward():
    w = torch.tensor([0.3, -0.9, 0.05, 1.2])
    return {"w_hat": qat.fake_quantize_ste(w, 2, None, "symmetric").tolist()}


question(
    id="ch11.fake_quant", chapter="ch11", difficulty="easy", tags=("qat", "fake-quantization"),
    question="What is 'fake quantization', and what does it give for w = [0.3, -0.9, 0.05, 1.2] "
             "at 2 bits, symmetric, per tensor?",
    answer=("Quantize then immediately dequantize, in floating point: the forward pass sees "
            "the grid's values while the weights stay in fp32 and keep receiving gradients. "
            "Here scale = 1.2 (absmax / 1), so w_hat = {w_hat}."),
    follow_ups=("Why not train the integer codes directly?",),
    compute=_fake_quant_forward,
)
