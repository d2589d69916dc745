"""Interview questions of chapter 7, *AWQ*. Numbers come from qlearn on a layer with loud channels."""

from __future__ import annotations

from functools import lru_cache

import torch

from qlearn import awq
from qlearn.interview import Quiz, question


@lru_cache(maxsize=1)
def _layer():
    """The questions' layer: W (256, 512), X (1024 tokens, 512) with 1 % of input channels x10."""
    return awq.outlier_layer(out_features=256, in_features=512, n_tokens=1024, n_outliers=5, seed=7)


@lru_cache(maxsize=1)
def _layer_numbers() -> dict:
    """AWQ on that layer (a few seconds)."""
    W, X, channels = _layer()
    r = awq.awq_quantize(W, X, 4, 128)
    Q_rtn = awq.pseudo_quantize(W, 4, 128)[0]
    keep = Q_rtn.clone()
    keep[:, channels] = W[:, channels]
    loud = torch.zeros(W.shape[1], dtype=torch.bool)
    loud[channels] = True
    col = lambda W_hat: ((W_hat - W) ** 2).mean(0).sqrt()
    return {"rtn": r.errors["rtn"], "awq": r.errors["full"], "scale": r.errors["scale_only"],
            "clip": r.errors["clip_only"], "keep": awq.output_error(X, W, keep),
            "ratio": r.best_ratio, "awq_rel": r.errors["full"] / r.errors["rtn"],
            "loud_gain": float(col(Q_rtn)[loud].mean() / col(r.W_hat)[loud].mean()),
            "quiet_loss": float(col(r.W_hat)[~loud].mean() / col(Q_rtn)[~loud].mean()),
            "s_loud": float(r.scales[loud].mean()), "max_code": int(r.codes.max())}


question(
    id="ch07.fp16_myth", chapter="ch07", difficulty="easy", tags=("awq", "mixed-precision"),
    question="Does AWQ keep the salient 1 % of weights in FP16?",
    answer="No. That is the experiment that motivates it: keeping the columns of the loudest 1 % of "
           "input channels in float cuts a 4-bit g128 RTN error of {rtn:.5f} to {keep:.5f}, but needs mixed "
           "precision inside the matrix. AWQ stores every weight as a 4-bit code (largest code {max_code}) "
           "and instead multiplies salient columns by s (mean {s_loud:.2f} on the loud channels here), "
           "dividing the input by s; the full method reaches {awq:.5f}.",
    follow_ups=("Where does the division by s go at inference?",
                "Why does choosing the 1 % by weight magnitude not work?"),
    quiz=Quiz(prompt="How does AWQ store its salient 1 % of weights?", kind="choice", options=("in FP16", "in INT8", "as 4-bit codes, scaled up by s before rounding", "pruned"), correct=2),
    compute=_layer_numbers, chain="awq-interview", after="ch07.salient_choice")

question(
    id="ch07.why_scaling_helps", chapter="ch07", difficulty="medium", tags=("awq", "rounding"),
    question="Why does multiplying a weight column by s > 1 before rounding reduce that column's "
             "error, and what limits how large s can be?",
    answer="Rounding error is at most half a step whatever the weight, so Q(w s)/s has its error divided "
           "by s: the loud columns' RMS weight error drops {loud_gain:.1f}x here. But once a scaled column "
           "holds its group's extreme value, the group's step grows and the other weights get coarser "
           "(their RMS error grows {quiet_loss:.2f}x). The search balances the two: best exponent "
           "r = {ratio:.2f} for s = mean|x|^r.",
    follow_ups=("What does r = 0 correspond to?", "Why normalise s by sqrt(max s * min s)?"),
    compute=_layer_numbers, chain="awq-interview", after="ch07.fp16_myth")

question(
    id="ch07.ablation", chapter="ch07", difficulty="medium", tags=("awq", "clipping"),
    question="AWQ has a scale search and a clip search. How much does each contribute?",
    answer="On a layer with 1 % loud input channels (4-bit, g128): RTN {rtn:.5f}, scale search only "
           "{scale:.5f}, clip search only {clip:.5f}, both {awq:.5f} ({awq_rel:.2f} x RTN). The two are "
           "complementary: scaling protects the loud channels, clipping refines every group's range "
           "using the partial outputs x_g . w_g.",
    follow_ups=("Why is the clip search skipped for q_proj and k_proj upstream?",
                "Why does the clip search subsample tokens?"),
    compute=_layer_numbers)


# --- more questions ------------------------------------------------------------------------

FP16_BITS = 16
CALIB = 512  # calibration tokens of the held-out comparison (AWQ's clip search needs >= 512)


@lru_cache(maxsize=1)
def _held_out() -> dict:
    """AWQ, GPTQ and RTN calibrated on the first 512 tokens, judged on the other 512 (4-bit g128)."""
    from qlearn import gptq

    W, X, _ = _layer()
    cal, test = X[:CALIB], X[CALIB:]
    a = awq.awq_quantize(W, cal, 4, 128)
    g = gptq.gptq_quantize(W, gptq.hessian(cal), 4, 128, sym=False).Q
    r = awq.pseudo_quantize(W, 4, 128)[0]
    out = {}
    for key, Wh in (("awq", a.W_hat), ("gptq", g), ("rtn", r)):
        out[key + "_cal"] = awq.output_error(cal, W, Wh)
        out[key + "_test"] = awq.output_error(test, W, Wh)
    out["n"] = CALIB
    return out


question(
    id="ch07.vs_gptq", chapter="ch07", difficulty="hard", tags=("awq", "gptq", "overfitting"),
    question="AWQ versus GPTQ on the same layer: which has the lower error, and on which tokens?",
    answer="Calibrate both on {n} tokens of a layer with 1 % loud input channels (4-bit, g128, asymmetric) "
           "and judge on {n} other tokens. On the calibration tokens GPTQ wins: {gptq_cal:.5f} vs AWQ "
           "{awq_cal:.5f} (RTN {rtn_cal:.5f}). Held out: GPTQ {gptq_test:.5f}, AWQ {awq_test:.5f}, RTN "
           "{rtn_test:.5f}. GPTQ fits a full d x d Hessian to the calibration set, and on these independent Gaussian inputs "
           "its off-diagonal is sampling noise; AWQ fits one exponent per "
           "layer from mean |x| per channel, which generalises by construction. That robustness, not a lower "
           "in-sample error, is AWQ's main selling point.",
    follow_ups=("Can you combine them (AWQ scales, then GPTQ rounding)?",
                "Why does GPTQ's held-out error depend on how correlated the real inputs are?"),
    compute=_held_out, chain="awq-interview", after="ch07.why_scaling_helps")


question(
    id="ch07.data_needs", chapter="ch07", difficulty="easy", tags=("awq", "calibration"),
    question="What does AWQ need from calibration data, and what does its search cost?",
    answer="Only activation statistics: the mean |x| of each input channel of each linear, and the layer's "
           "outputs to score candidates. No gradients, no Hessian. The scale search tries {n_grid} exponents "
           "r in [0, 1) for s = mean|x|^r; the clip search tries {n_clip} shrink factors of each group's max, "
           "down to {min_shrink:.2f}, on {n_tok} subsampled tokens. Each candidate is one quantize and one "
           "matmul, so a 7B model takes minutes.",
    follow_ups=("Why is the exponent grid 0..0.95 and not up to 1?", "Why can AWQ calibrate on fewer tokens than GPTQ?"),
    compute=lambda: {"n_grid": awq.N_GRID, "n_clip": len(awq.CLIP_SHRINKS), "min_shrink": min(awq.CLIP_SHRINKS),
                     "n_tok": awq.N_SAMPLE_TOKEN})


@lru_cache(maxsize=1)
def _duo_groups() -> dict:
    W, X, _ = _layer()
    out = {"plain": awq.awq_quantize(W, X, 4, 128).errors["full"],
           "duo": awq.awq_quantize(W, X, 4, 128, duo_scaling=True).errors["full"]}
    for gs in (64, 128, 256):
        r = awq.awq_quantize(W, X, 4, gs)
        out[f"a{gs}"], out[f"r{gs}"] = r.errors["full"], r.errors["rtn"]
        out[f"x{gs}"] = r.errors["full"] / r.errors["rtn"]
        out[f"c{gs}"] = FP16_BITS / gs
    return out


question(
    id="ch07.duo_scaling", chapter="ch07", difficulty="hard", tags=("awq", "autoawq", "implementation"),
    question="AutoAWQ's duo_scaling makes s = mean|x|^r / mean|w|^(1-r) instead of mean|x|^r. Does it help?",
    answer="It also shrinks columns with large weights, moving the scale toward SmoothQuant's form. On the "
           "chapter-style layer (4-bit g128) the full AWQ error is {plain:.5f} without and {duo:.5f} with duo "
           "scaling: a per-layer effect, not a rule, so implementations search both and keep the better one "
           "when they can afford it. Check which variant a checkpoint used before comparing numbers with a "
           "paper.",
    follow_ups=("Why is the weight statistic taken after normalising each group by its absmax?", "How would you decide between the two variants for a new model?"),
    compute=_duo_groups)


question(
    id="ch07.group_size", chapter="ch07", difficulty="medium", tags=("awq", "group size"),
    question="How does AWQ's gain over RTN change with the group size?",
    answer="On the chapter-style layer, 4-bit: groups of 64 RTN {r64:.5f} vs AWQ {a64:.5f}; 128: {r128:.5f} vs "
           "{a128:.5f}; 256: {r256:.5f} vs {a256:.5f}. Here the ratio AWQ/RTN barely moves ({x64:.2f}, {x128:.2f}, "
           "{x256:.2f}): both errors grow with the group, since one step is shared by more weights and a scaled "
           "salient column more often sets its group's max. The group size buys accuracy at the cost of "
           "scales ({c64:.3f} bit per weight for an fp16 scale per 64 weights, {c128:.3f} per 128); g128 is the usual "
           "compromise.",
    follow_ups=("What does per-channel (no groups) AWQ look like?", "How does the scale search interact with the clip search at large groups?"),
    compute=_duo_groups)


question(
    id="ch07.fold", chapter="ch07", difficulty="medium", tags=("awq", "inference", "fusion"),
    question="AWQ scales the inputs of a linear by 1/s. Where does that division go so that inference "
             "costs nothing extra?",
    answer="Into the operation that produces the input. Before q/k/v and gate/up projections it is an "
           "RMSNorm: divide its weight by s. Before down_proj it is the elementwise product of gate and up: "
           "divide up_proj's output rows by s. Before o_proj it is attention's output, a weighted sum of v: "
           "divide v_proj's rows by s (when shapes match, as upstream checks). Where no such producer exists "
           "(e.g. o_proj under GQA with mismatched shapes), the layer is left unscaled. The quantized file "
           "stores W x s in codes and the modified norm weights; on this layer the chosen s averages "
           "{s_loud:.2f} on the loud channels.",
    follow_ups=("Why can't the division be folded through a SiLU?", "Which scales cannot be folded in a model with parallel attention and MLP blocks?"),
    compute=_layer_numbers)


def _salient_by_weight() -> dict:
    W, X, channels = _layer()
    Q = awq.pseudo_quantize(W, 4, 128)[0]
    n = len(channels)
    out = {"rtn": awq.output_error(X, W, Q), "n": n}
    by_act = torch.as_tensor(channels)
    by_w = W.abs().mean(0).argsort(descending=True)[:n]
    for key, idx in (("act", by_act), ("w", by_w)):
        keep = Q.clone()
        keep[:, idx] = W[:, idx]
        out[key] = awq.output_error(X, W, keep)
    return out


question(
    id="ch07.salient_choice", chapter="ch07", difficulty="medium", tags=("awq", "outliers", "saliency"),
    question="To find the 1 % of weight columns worth protecting, should you look at the weights or the "
             "activations?",
    answer="At the activations. Keeping {n} columns in float on the chapter-style layer (RTN 4-bit g128 error "
           "{rtn:.5f}): chosen by mean |x| of the input channel the error drops to {act:.5f}; chosen by mean "
           "|w| of the column it is {w:.5f}. A weight's effect on the output is its error times the input it "
           "meets, and loud input channels, not big weights, are what LLMs have.",
    follow_ups=("How does this observation lead to scaling instead of mixed precision?", "How stable is the set of salient channels from one calibration set to another?"),
    compute=_salient_by_weight, chain="awq-interview")
