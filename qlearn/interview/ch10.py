"""Interview questions of chapter 10, GGUF k-quants. Every number is computed by qlearn."""
from __future__ import annotations

import numpy as np

from qlearn import kquants as K
from qlearn.interview import question


def _bpw():
    t = K.QTYPES["Q4_K"]
    return {"bpw": t.bits_per_weight, "bytes": t.type_size, "n": t.block_size,
            "q41": K.QTYPES["Q4_1"].bits_per_weight, "sub": K.SUB_BLOCK["Q4_K"],
            "nsub": t.block_size // K.SUB_BLOCK["Q4_K"]}


question(
    id="ch10.q4k_bpw", chapter="ch10", difficulty="easy", tags=("gguf", "k-quants", "memory"),
    question="Why is Q4_K 'a 4-bit format' that costs more than 4 bits per weight? How much exactly?",
    answer=("{bpw} bits per weight: a super-block of {n} weights takes {bytes} bytes. Besides the 4-bit "
            "codes it stores two fp16 super-scales (d for scales, dmin for mins) and a 6-bit scale and "
            "a 6-bit min for each of its {nsub} sub-blocks of {sub} weights. Q4_1, which keeps fp16 scale and "
            "min per {sub} weights, costs {q41} bits per weight."),
    follow_ups=("What is the bits per weight of Q6_K, and where do its extra bits go?",
                "How would the cost change with 16-weight sub-blocks?"),
    compute=_bpw,
)


def _imat():
    rng = np.random.default_rng(10)
    W = rng.standard_normal((64, 1024)).astype(np.float32)
    X = (rng.standard_normal((256, 1024)) * np.exp(rng.normal(0, 1, 1024))).astype(np.float32)
    imat = (X.astype(np.float64) ** 2).mean(axis=0).astype(np.float32)
    Y = X @ W.T
    err = []
    for im in (None, imat):
        Wh = K.dequantize(K.quantize(W, "Q4_K", im), "Q4_K")
        err.append(float(np.sum((X @ Wh.T - Y) ** 2) / np.sum(Y ** 2)))
    return {"plain": err[0], "imat": err[1], "ratio": err[0] / err[1]}


question(
    id="ch10.imatrix", chapter="ch10", difficulty="medium", tags=("gguf", "imatrix", "calibration"),
    question="What is llama.cpp's importance matrix, and what does it change in a Q4_K file?",
    answer=("It is the mean squared activation of each input column, collected on calibration text. If "
            "activation columns are uncorrelated, the output error of a layer is the sum over columns of "
            "imatrix_j times the squared weight error, so the quantizer weights its scale and min search by "
            "imatrix_j * sqrt(sigma^2 + x_j^2). The file format does not change, only the chosen codes and "
            "scales. On a synthetic layer with uneven activation scales, the relative output error of Q4_K "
            "drops from {plain:.5f} to {imat:.5f} ({ratio:.2f}x lower)."),
    follow_ups=("Why does Q8_0 ignore the imatrix?",
                "What happens to columns that never saw an activation (imatrix 0)?"),
    compute=_imat,
)


def _mix():
    t = K.QTYPES["Q4_K"]
    return {"n": t.block_size, "sub": K.SUB_BLOCK["Q4_K"], "bpw": t.bits_per_weight}


question(
    id="ch10.mixes", chapter="ch10", difficulty="easy", tags=("gguf", "mixes", "myths"),
    question="Does Q4_K_S use smaller groups than Q4_K_M?",
    answer=("No. Q4_K_S and Q4_K_M are mixes: rules that choose a type per tensor. Every tensor stored as "
            "Q4_K uses the same super-block of {n} weights with sub-blocks of {sub} and costs {bpw} bits per "
            "weight in both; the M mix promotes more tensors (attn_v, ffn_down on some layers) to Q5_K/Q6_K, "
            "so the file is a little larger and more accurate."),
    follow_ups=("Why does the output (LM head) tensor get Q6_K in every k-quant mix?",),
    compute=_mix,
)


def _rounding():
    v = np.array([0.5, 1.5, 2.5], np.float32)
    return {"ni": ", ".join(str(int(a)) for a in K.nearest_int(v)),
            "rf": ", ".join(str(int(np.sign(a) * np.floor(abs(a) + 0.5))) for a in v)}


question(
    id="ch10.bitexact", chapter="ch10", difficulty="hard", tags=("gguf", "numerics", "reproducibility"),
    question=("You re-implement ggml's Q4_K quantizer and 1% of your bytes differ from llama-quantize's. "
              "What are the usual causes?"),
    answer=("Rounding rules: k-quants use nearest_int (float32 round half to even: 0.5, 1.5, 2.5 -> {ni}), "
            "Q8_0 uses roundf (ties away from zero: {rf}), Q4_0 adds 8.5 and truncates. Accumulation order: "
            "ggml sums left to right in float32, numpy's sum is pairwise and dot uses BLAS. FMA: a build "
            "with -march=native contracts a*b+c and changes bytes. fp16 round trips: the codes are "
            "recomputed from the fp16-rounded super-scales. Stale codes: a sub-block whose scale rounds to "
            "zero keeps the codes of the search."),
    follow_ups=("How would you prove your implementation is bit-exact?",
                "Why can GGUFs made on ARM differ from those made on x86?"),
    compute=_rounding,
)
