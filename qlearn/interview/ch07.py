"""Interview questions of chapter 7, *AWQ*. Numbers come from qlearn on a layer with loud channels."""

from __future__ import annotations

from functools import lru_cache

import torch

from qlearn import awq
from qlearn.interview import question


@lru_cache(maxsize=1)
def _layer_numbers() -> dict:
    """AWQ on a 256 x 512 layer, 1024 tokens, 1 % of input channels x10 (a few seconds)."""
    W, X, channels = awq.outlier_layer(out_features=256, in_features=512, n_tokens=1024,
                                       n_outliers=5, seed=7)
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
    compute=_layer_numbers)

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
    compute=_layer_numbers)

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
