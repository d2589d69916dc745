"""Interview questions of chapter 8, *SmoothQuant and LLM.int8()*."""

from __future__ import annotations

from functools import lru_cache

import torch

from qlearn import awq, llm_int8, smoothquant as sq
from qlearn.interview import question


@lru_cache(maxsize=1)
def _numbers() -> dict:
    W, X, channels = awq.outlier_layer(out_features=256, in_features=512, n_tokens=512,
                                       n_outliers=5, seed=3)
    act, wgt = sq.act_scales(X), sq.weight_scales(W)

    def w8a8(alpha, wq, aq):
        if alpha is None:
            r = sq.fake_quant_w8a8(X, W, wq, aq)
        else:
            s = sq.smooth_scales(act, wgt, alpha)
            r = sq.fake_quant_w8a8(X / s, W * s, wq, aq)
        return awq.output_error(X, W, r.W_q, r.X_q)

    A = X[:64].half().float()
    ref = A.double() @ W.half().double().T
    err = lambda y: float(((y.double() - ref) ** 2).sum() / (ref ** 2).sum())
    dec, nodec = llm_int8.int8_matmul(A, W, 6.0), llm_int8.int8_matmul(A, W, 0.0)
    return {"tt_none": w8a8(None, "per_tensor", "per_tensor"), "tt_05": w8a8(0.5, "per_tensor", "per_tensor"),
            "ct_none": w8a8(None, "per_channel", "per_token"), "ct_05": w8a8(0.5, "per_channel", "per_token"),
            "ct_1": w8a8(1.0, "per_channel", "per_token"),
            "dec": err(dec.out), "nodec": err(nodec.out), "ncols": int(dec.outlier_cols.numel()),
            "n_in": W.shape[1], "const": llm_int8.DEQUANT_CONST, "inv": 1 / 127 ** 2}


question(
    id="ch08.alpha", chapter="ch08", difficulty="medium", tags=("smoothquant", "w8a8"),
    question="What does SmoothQuant's alpha control, and what happens at the extremes?",
    answer="s_j = max|X_j|^alpha / max|W_j|^(1-alpha): alpha is how much of the activation range moves into "
           "the weights. On a layer with 1 % loud channels, W8A8 per-tensor error goes from {tt_none:.2e} "
           "unsmoothed to {tt_05:.2e} at alpha 0.5; per-channel/per-token from {ct_none:.2e} to {ct_05:.2e}, "
           "but alpha 1 (all difficulty in the weights) gives {ct_1:.2e}.",
    follow_ups=("Where is the division by s applied at inference?", "Why per-token and not per-channel activations?"),
    compute=_numbers)

question(
    id="ch08.decomposition", chapter="ch08", difficulty="medium", tags=("llm.int8", "outliers"),
    question="How does LLM.int8() handle outliers, and what does it buy?",
    answer="Input columns with any |a| >= 6 are multiplied in fp16 (here {ncols} of {n_in} columns), the rest "
           "per-token x per-row int8. Relative error {dec:.2e} with the decomposition vs {nodec:.2e} without.",
    follow_ups=("Why are the outlier columns decided per batch, not offline?",
                "Which weights does bitsandbytes use in the fp16 part?"),
    compute=_numbers)

question(
    id="ch08.constant", chapter="ch08", difficulty="hard", tags=("llm.int8", "bitsandbytes"),
    question="bitsandbytes dequantizes the int32 accumulator with a constant. Which, and why does the CPU "
             "result differ from a naive reimplementation?",
    answer="out = acc * SCA_i * SCB_j * c with c = {const:.6e} on the CPU/default backend; 1/127^2 is {inv:.6e}. "
           "A reimplementation using 1/127^2, or fp16 weights in the outlier part, differs in the last fp16 bits.",
    follow_ups=("Is the int8 GEMM itself exact on CPU?",),
    compute=_numbers)
