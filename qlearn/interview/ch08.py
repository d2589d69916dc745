"""Interview questions of chapter 8, *SmoothQuant and LLM.int8()*."""

from __future__ import annotations

from functools import lru_cache

import torch

from qlearn import awq, llm_int8, smoothquant as sq
from qlearn.interview import Quiz, question


THRESHOLD = 6.0  # LLM.int8()'s outlier threshold on |x|
PLANTED = {(5, 33): 7.5, (7, 44): 6.0, (9, 55): -6.5, (11, 66): 5.99}  # the chapter's values near 6
N_TOKENS_INT8 = 64  # tokens of the chapter's LLM.int8() walk-through
THRESHOLDS = (2.0, 4.0, 6.0, 12.0)


@lru_cache(maxsize=1)
def _chapter():
    """The chapter's layer (awq.outlier_layer defaults) and its 64 tokens with planted values."""
    W, X, channels = awq.outlier_layer()
    A = X[:N_TOKENS_INT8].clone()
    for (t, c), v in PLANTED.items():
        A[t, c] = v
    return W, X, channels, A


def _rel(out, ref):
    return float(((out.double() - ref) ** 2).sum() / (ref ** 2).sum())


@lru_cache(maxsize=1)
def _numbers() -> dict:
    W, X, channels, A = _chapter()
    act, wgt = sq.act_scales(X), sq.weight_scales(W)
    Y = X.double() @ W.double().T

    def w8a8(alpha, wq, aq):
        if alpha is None:
            return _rel(sq.fake_quant_w8a8(X, W, wq, aq).out, Y)
        s = sq.smooth_scales(act, wgt, alpha)
        return _rel(sq.fake_quant_w8a8(X / s, W * s, wq, aq).out, Y)

    ref = A.half().double() @ W.half().double().T
    dec, nodec = llm_int8.int8_matmul(A, W, THRESHOLD), llm_int8.int8_matmul(A, W, 0.0)
    cols = dec.outlier_cols
    out_int8 = dec.out.double() - A.half()[:, cols].double() @ (
        dec.CB[:, cols].double() * dec.SCB[:, None].double() * llm_int8.WEIGHT_DEQUANT).T
    fp16_w = out_int8 + A.half()[:, cols].double() @ W.half()[:, cols].double().T
    return {"tt_none": w8a8(None, "per_tensor", "per_tensor"), "tt_05": w8a8(0.5, "per_tensor", "per_tensor"),
            "ct_none": w8a8(None, "per_channel", "per_token"), "ct_05": w8a8(0.5, "per_channel", "per_token"),
            "ct_1": w8a8(1.0, "per_channel", "per_token"), "n_loud": len(channels),
            "dec": _rel(dec.out, ref), "nodec": _rel(nodec.out, ref), "ncols": int(cols.numel()),
            "ratio": _rel(nodec.out, ref) / _rel(dec.out, ref), "fp16w": _rel(fp16_w, ref),
            "n_tok": N_TOKENS_INT8, "n_in": W.shape[1], "const": llm_int8.DEQUANT_CONST, "inv": 1 / 127 ** 2}


question(
    id="ch08.alpha", chapter="ch08", difficulty="medium", tags=("smoothquant", "w8a8"),
    question="What does SmoothQuant's alpha control, and what happens at the extremes?",
    answer="s_j = max|X_j|^alpha / max|W_j|^(1-alpha): alpha is how much of the activation range moves into "
           "the weights. On the chapter's layer ({n_loud} of 1024 input channels x10), W8A8 per-tensor error goes from {tt_none:.2e} "
           "unsmoothed to {tt_05:.2e} at alpha 0.5; per-channel/per-token from {ct_none:.2e} to {ct_05:.2e}, "
           "but alpha 1 (all difficulty in the weights) gives {ct_1:.2e}.",
    follow_ups=("Where is the division by s applied at inference?", "Why per-token and not per-channel activations?"),
    compute=_numbers)

question(
    id="ch08.decomposition", chapter="ch08", difficulty="medium", tags=("llm.int8", "outliers"),
    question="How does LLM.int8() handle outliers, and what does it buy?",
    answer="Input columns with any |a| >= 6 are multiplied in fp16, the rest per-token x per-row int8 with "
           "int32 accumulation. On the chapter's {n_tok} tokens ({ncols} of {n_in} columns go to fp16) the "
           "relative error is {dec:.2e} with the decomposition and {nodec:.2e} without ({ratio:.1f}x larger). "
           "bitsandbytes multiplies the outlier columns by the int8 weights dequantized to fp16; with the "
           "original fp16 weights there, as the paper describes, it would be {fp16w:.2e}.",
    follow_ups=("Why are the outlier columns decided per batch, not offline?",
                "Which weights does bitsandbytes use in the fp16 part?"),
    quiz=Quiz(prompt="LLM.int8(): how many of the 1024 input columns go to fp16 in the chapter's 64 tokens?", value="ncols", rel_tol=0.001, unit="columns"),
    compute=_numbers, chain="w8a8-outliers", after="ch08.migration")

question(
    id="ch08.constant", chapter="ch08", difficulty="hard", tags=("llm.int8", "bitsandbytes"),
    question="bitsandbytes dequantizes the int32 accumulator with a constant. Which, and why does the CPU "
             "result differ from a naive reimplementation?",
    answer="out = acc * SCA_i * SCB_j * c with c = {const:.6e} on the CPU/default backend; 1/127^2 is {inv:.6e}. "
           "A reimplementation using 1/127^2, or fp16 weights in the outlier part, differs in the last fp16 bits.",
    follow_ups=("Is the int8 GEMM itself exact on CPU?", "How would you prove your reimplementation matches bitsandbytes bit for bit?"),
    compute=_numbers)


# --- more questions ------------------------------------------------------------------------

FOLD_DIM, FOLD_OUT, FOLD_TOKENS, FOLD_GAIN = 64, 32, 256, 30  # the chapter's folding example
FOLD_BOUND = 1e-6  # relative change of the outputs that counts as float32 rounding


def _flatness():
    W, X, channels, _ = _chapter()
    act, wgt = sq.act_scales(X), sq.weight_scales(W)
    s = sq.smooth_scales(act, wgt, 0.5)
    a2, w2 = (X / s).abs().amax(0), (W * s).abs().amax(0)
    return {"a": float(act.max() / act.median()), "w": float(wgt.max() / wgt.median()),
            "a_s": float(a2.max() / a2.median()), "w_s": float(w2.max() / w2.median()), "n": len(channels)}


question(
    id="ch08.why_activations", chapter="ch08", difficulty="easy", tags=("w8a8", "outliers", "activations"),
    question="Weights quantize to 8 bits easily. Why are activations the hard part of W8A8?",
    answer="Their ranges are uneven across channels and unknown in advance. On the chapter's layer the largest "
           "per-channel max |x| is {a:.1f}x the median channel's, while per input channel the weights vary by "
           "{w:.2f}x. An int8 scale per token is set by the loud channels, leaving the ordinary ones few "
           "levels; and the scale must be computed on the fly (dynamic) or guessed from calibration (static).",
    follow_ups=("Which layers of a transformer have the loudest activation channels?",),
    compute=_flatness, chain="w8a8-outliers")


question(
    id="ch08.migration", chapter="ch08", difficulty="hard", tags=("smoothquant", "outliers", "w8a8"),
    question="What exactly does SmoothQuant at alpha 0.5 do to the channel ranges of X and W?",
    answer="It equalises them: s_j = sqrt(max|X_j| / max|W_j|) makes max|X_j / s_j| = max|W_j s_j| for every "
           "channel j. On the chapter's layer the activation channel max/median ratio falls from {a:.1f} to "
           "{a_s:.2f} and the weight one rises from {w:.2f} to {w_s:.2f}: both now moderately uneven instead of "
           "one badly uneven. The product XW^T is unchanged in exact arithmetic.",
    follow_ups=("Why does alpha 0.5 not always minimise the error?", "What does the weight side pay for the smoothing?"),
    compute=_flatness, chain="w8a8-outliers", after="ch08.why_activations")


def _sweep():
    W, _, _, A = _chapter()
    ref = A.half().double() @ W.half().double().T
    out = {}
    for t in THRESHOLDS:
        r = llm_int8.int8_matmul(A, W, t)
        key = str(int(t))
        out["n" + key], out["e" + key] = int(r.outlier_cols.numel()), _rel(r.out, ref)
    out["n_in"] = W.shape[1]
    return out


question(
    id="ch08.threshold", chapter="ch08", difficulty="hard", tags=("llm.int8", "outliers", "threshold"),
    question="LLM.int8()'s threshold is 6. What happens if you lower it to 2 or raise it to 12?",
    answer="It trades int8 coverage for accuracy. On the chapter's 64 tokens ({n_in} columns): threshold 2 "
           "sends {n2} columns to fp16 (error {e2:.2e}), 4: {n4} ({e4:.2e}), 6: {n6} ({e6:.2e}), 12: {n12} "
           "({e12:.2e}). Below the range of ordinary activations nearly every column goes to fp16 and the "
           "int8 part saves nothing; a threshold above the outliers' own magnitude would put them back into int8. "
           "6 sits above ordinary values "
           "(here N(0,1)) and below the emergent outliers of large models.",
    follow_ups=("Why is the decomposition decided per batch, and what does that do to the kernel's speed?",),
    compute=_sweep, chain="w8a8-outliers", after="ch08.decomposition")


def _fold():
    torch.manual_seed(0)
    norm = torch.nn.RMSNorm(FOLD_DIM)
    q_proj = torch.nn.Linear(FOLD_DIM, FOLD_OUT, bias=False)
    k_proj = torch.nn.Linear(FOLD_DIM, FOLD_OUT, bias=False)
    h = torch.randn(FOLD_TOKENS, FOLD_DIM)
    with torch.no_grad():
        h[:, :2] *= FOLD_GAIN
        before = torch.cat([q_proj(norm(h)), k_proj(norm(h))], 1)
        s = sq.smooth_scales(sq.act_scales(norm(h)), sq.weight_scales(q_proj.weight, k_proj.weight), 0.5)
        sq.smooth(norm, [q_proj, k_proj], s)
        after = torch.cat([q_proj(norm(h)), k_proj(norm(h))], 1)
    rel = float((after - before).abs().max() / before.abs().max())
    if not rel < FOLD_BOUND:
        raise ValueError(f"folding changed the outputs by {rel:.2e} (relative), more than {FOLD_BOUND:g}")
    return {"bound": FOLD_BOUND, "top": float(before.abs().max())}


question(
    id="ch08.fold", chapter="ch08", difficulty="medium", tags=("smoothquant", "inference", "fusion"),
    question="SmoothQuant divides activations by s. Who does that division at inference, and is it exact?",
    answer="Nobody at run time: RMSNorm ends with a per-channel multiply by its weight, so dividing that weight "
           "by s (and multiplying the columns of every linear that reads the norm, e.g. q, k and v, by s) "
           "folds the smoothing offline. In float it is exact up to rounding: on the chapter's example "
           "(an RMSNorm feeding q and k, two loud channels; outputs up to {top:.1f}) the outputs change by "
           "less than {bound:.0e} of their largest value, float32 rounding. Inputs that do not come from a norm (o_proj, down_proj) need a "
           "producer that can absorb s, which is why SmoothQuant smooths only q/k/v and gate/up.",
    follow_ups=("Why must the same s be used for q, k and v?", "What happens to the folded scales if you later fine-tune the model?"),
    compute=_fold)


question(
    id="ch08.granularity", chapter="ch08", difficulty="medium", tags=("w8a8", "per-token", "granularity"),
    question="Without any smoothing, how much does per-token activation and per-channel weight quantization "
             "buy over per-tensor for both?",
    answer="On the chapter's layer: W8A8 per tensor for both gives relative output error {tt_none:.2e}, per "
           "output channel x per token {ct_none:.2e}, a {gain:.1f}x reduction for free in the kernel (both "
           "scales factor out of the int32 sum). Smoothing at alpha 0.5 then brings them to {tt_05:.2e} and "
           "{ct_05:.2e}.",
    follow_ups=("Why is per-token cheap on a GPU but awkward for static quantization?", "Which of these schemes can use INT8 tensor cores without extra work?"),
    compute=lambda: _numbers() | {"gain": _numbers()["tt_none"] / _numbers()["ct_none"]})


def _int8_memory():
    from qlearn import memory

    m = memory.MODELS["Llama-2-13B"]
    return {"f16": memory.gib(memory.weight_memory_bytes(m.n_params, "FP16")),
            "i8": memory.gib(memory.weight_memory_bytes(m.n_params, "INT8 (per-channel)")),
            "name": m.name}


question(
    id="ch08.int8_use", chapter="ch08", difficulty="easy", tags=("llm.int8", "memory", "speed"),
    question="LLM.int8() halves weight memory. Does it make inference faster?",
    answer="Usually not. It was built to fit large models ({name}: {f16:.1f} GiB in fp16, {i8:.1f} GiB in int8), "
           "not for speed: each matmul quantizes the activations, finds outlier columns, runs an int8 GEMM and "
           "a small fp16 GEMM and adds them, which at small batch is slower than one fp16 GEMM. For speed use "
           "W8A8 kernels with static or per-token scales (SmoothQuant) or weight-only 4-bit kernels.",
    follow_ups=("When would you still choose it?",),
    compute=_int8_memory)
