"""Interview questions of chapter 10, GGUF k-quants. Every number is computed by qlearn."""
from __future__ import annotations

import numpy as np

from qlearn import kquants as K
from qlearn.interview import Quiz, question


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
    quiz=Quiz(prompt="Bits per weight of the GGUF Q4_K block type?", value="bpw", rel_tol=0.001, unit="bpw"),
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


# --- more questions ------------------------------------------------------------------------

from functools import lru_cache  # noqa: E402

TYPES = ("Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
ASYMMETRIC = ("Q4_1", "Q5_1", "Q2_K", "Q4_K", "Q5_K")  # types storing a min (y = d*q - m)


@lru_cache(maxsize=1)
def _matrix():
    return np.random.default_rng(11).standard_normal((64, 1024)).astype(np.float32)


@lru_cache(maxsize=1)
def _type_errors():
    W = _matrix()
    out = {}
    for t in TYPES:
        Wh = K.dequantize(K.quantize(W, t), t)
        out[t] = float(np.sum((Wh - W).astype(np.float64) ** 2) / np.sum(W.astype(np.float64) ** 2))
        out[t + "_bpw"] = K.QTYPES[t].bits_per_weight
    return out


question(
    id="ch10.types", chapter="ch10", difficulty="medium", tags=("gguf", "k-quants", "quality"),
    question="Rank the GGUF block types by error and by size. Which are worth their bits?",
    answer=("Relative squared error on a Gaussian matrix (no imatrix), with bits per weight: Q2_K {Q2_K:.4f} "
            "({Q2_K_bpw}), Q3_K {Q3_K:.4f} ({Q3_K_bpw}), Q4_0 {Q4_0:.4f} ({Q4_0_bpw}), Q4_1 {Q4_1:.4f} "
            "({Q4_1_bpw}), Q4_K {Q4_K:.4f} ({Q4_K_bpw}), Q5_K {Q5_K:.5f} ({Q5_K_bpw}), Q6_K {Q6_K:.5f} "
            "({Q6_K_bpw}), Q8_0 {Q8_0:.6f} ({Q8_0_bpw}). Q4_K beats Q4_0 and Q4_1 at fewer bits than Q4_1: "
            "its searched, two-level scales are the better use of overhead. Weight error is only a proxy: "
            "the model's perplexity or KL divergence decides."),
    follow_ups=("Why does error fall about 4x per extra bit from Q4_K to Q6_K?", "Which type would you pick for a 7B model on a phone?"),
    compute=_type_errors)


def _symmetry():
    desc = {t: ", ".join(f"{f.name} ({f.what})" for f in K.QTYPES[t].layout) for t in ("Q2_K", "Q3_K", "Q6_K")}
    has_min = {t: any(f.name in ("m", "dmin") or "min" in f.what for f in K.QTYPES[t].layout)
               for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q8_0")}
    return {"q2": desc["Q2_K"], "q3": desc["Q3_K"], "q6": desc["Q6_K"],
            "asym": ", ".join(t for t, v in has_min.items() if v),
            "sym": ", ".join(t for t, v in has_min.items() if not v)}


question(
    id="ch10.symmetry", chapter="ch10", difficulty="hard", tags=("gguf", "k-quants", "zero-point"),
    question="Which GGUF types are asymmetric (store a min) and which symmetric? Is Q2_K symmetric because it "
             "has so few bits?",
    answer=("No: Q2_K stores a min. Read the block layouts: Q2_K = {q2}; Q3_K = {q3}; Q6_K = {q6}. With a min "
            "(y = d q - m): {asym}. Symmetric (y = d (q - offset)): {sym}. At 2 bits an offset grid would "
            "waste one of only four levels, so the min pays for itself; Q3_K and Q6_K spend their bits on "
            "signed scales per 16 weights instead."),
    follow_ups=("Why do Q2_K's scales and mins get only 4 bits each, while Q4_K's get 6?",),
    compute=_symmetry)


def _two_level():
    e = _type_errors()
    q4k = K.QTYPES["Q4_K"]
    sub = K.SUB_BLOCK["Q4_K"]
    nsub = q4k.block_size // sub
    fp16_each = 4 + 2 * 16 / sub
    return {"q4k": e["Q4_K"], "q41": e["Q4_1"], "bpw": q4k.bits_per_weight, "q41_bpw": K.QTYPES["Q4_1"].bits_per_weight,
            "fp16_each": fp16_each, "nsub": nsub, "sub": sub,
            "scale_bits": (q4k.bits_per_weight - 4) * q4k.block_size}


question(
    id="ch10.two_level", chapter="ch10", difficulty="hard", tags=("gguf", "k-quants", "scales"),
    question="Why do k-quants quantize their scales (6-bit sub-block scales under an fp16 super-scale) instead "
             "of storing an fp16 scale and min per sub-block?",
    answer=("Overhead. An fp16 scale and min for each {sub}-weight sub-block cost {fp16_each} bits per weight "
            "(that is Q4_1: {q41_bpw}). Q4_K stores {nsub} 6-bit scales and 6-bit mins per 256 weights plus two "
            "fp16 super-scales: {scale_bits:.0f} bits of overhead per super-block, {bpw} bpw in all. The 6-bit "
            "rounding of the scales costs little, and Q4_K also searches each sub-block's scale and min instead "
            "of taking the min and max: on a Gaussian matrix its error is {q4k:.4f} vs Q4_1's {q41:.4f}, at "
            "half a bit less per weight."),
    follow_ups=("What happens to a sub-block whose 6-bit scale rounds to 0?",),
    compute=_two_level)


def _mix():
    from qlearn import gguf_mixes

    c = gguf_mixes.LLAMA2_7B
    plan = gguf_mixes.mix_plan("Q4_K_M", c)
    promoted = sorted({name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
                       for name, t in plan.items() if t not in ("Q4_K", "F32")})
    n6 = sum(1 for t in plan.values() if t == "Q6_K")
    return {"m": gguf_mixes.mix_bpw("Q4_K_M", c), "s": gguf_mixes.mix_bpw("Q4_K_S", c),
            "t": K.QTYPES["Q4_K"].bits_per_weight, "promoted": ", ".join(promoted), "n6": n6}


question(
    id="ch10.mix_bpw", chapter="ch10", difficulty="medium", tags=("gguf", "mixes", "memory"),
    question="A Q4_K_M file of Llama-2-7B: how many bits per weight on average, and why more than 4.5?",
    answer=("{m:.3f} bpw (Q4_K_S: {s:.3f}), against {t} for the Q4_K block type. The mix stores some tensors "
            "in larger types ({n6} tensors in Q6_K; promoted kinds: {promoted}): the ones whose errors hurt "
            "most per bit, like attn_v, ffn_down in the layers chosen by use_more_bits, and the output matrix. "
            "File sizes quoted for 'Q4_K_M' therefore cannot be computed from 4.5 bpw."),
    follow_ups=("How would you decide which tensors deserve more bits on a new architecture?", "Why is token_embd left in the low type in most mixes?"),
    compute=_mix)


def _q8_act():
    from qlearn import kernels

    W = _matrix()
    x = np.random.default_rng(12).standard_normal(W.shape[1]).astype(np.float32)
    out = {}
    for t in ("Q4_K", "Q6_K", "Q8_0", "Q5_0"):  # the answer quotes these (MATVEC_TYPES has more)
        q = K.quantize(W, t)
        y_ref = (K.dequantize(q, t).astype(np.float64) @ x.astype(np.float64))
        for act in ("q8", "f32"):
            y = kernels.matvec(q, t, x, activations=act).astype(np.float64)
            out[f"{t}_{act}"] = float(np.sum((y - y_ref) ** 2) / np.sum(y_ref ** 2))
        y_true = W.astype(np.float64) @ x.astype(np.float64)
        out[f"{t}_w"] = float(np.sum((y_ref - y_true) ** 2) / np.sum(y_true ** 2))
    return out


question(
    id="ch10.q8_activations", chapter="ch10", difficulty="hard", tags=("gguf", "kernels", "activations"),
    question="llama.cpp's CPU kernels quantize the activation vector to 8 bits before the dot product. How much "
             "error does that add, compared with the weight quantization itself?",
    answer=("Little, next to 4-bit weights. Relative error of y = W x against the same dequantized weights in float64: Q4_K with "
            "Q8_K activations {Q4_K_q8:.1e} (float activations {Q4_K_f32:.1e}), Q6_K {Q6_K_q8:.1e}, Q8_0 with "
            "Q8_0 activations {Q8_0_q8:.1e}. The weight quantization itself costs {Q4_K_w:.1e} (Q4_K), "
            "{Q6_K_w:.1e} (Q6_K), {Q8_0_w:.1e} (Q8_0): for Q8_0 weights the two errors are of the same size, so "
            "an 8-bit model computed this way is closer to W8A8 than to weight-only. In exchange every sub-block dot product is an integer "
            "multiply-add, and Q4_K's min term becomes one product with a precomputed sum of activation codes."),
    follow_ups=("Why does the activation error matter more for Q8_0 weights than for Q4_K?",),
    compute=_q8_act)
