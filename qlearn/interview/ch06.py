"""Interview questions of chapter 6, *GPTQ*; every number is computed by qlearn."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from qlearn import gptq
from qlearn.interview import Quiz, question


@lru_cache(maxsize=1)
def _layer():
    W, X, outliers = gptq.synthetic_layer()
    gram = X.astype(np.float64).T @ X.astype(np.float64)
    return torch.from_numpy(W), gptq.hessian(X), gram, outliers


def _err(W, Q, gram):
    return gptq.relative_output_error(None, W, Q, gram=gram)


@lru_cache(maxsize=1)
def _act_order():
    W, H, gram, outliers = _layer()
    rtn = _err(W, gptq.rtn_quantize(W, 4, 128, True).Q, gram)
    plain = _err(W, gptq.gptq_quantize(W, H, 4, 128).Q, gram)
    act = _err(W, gptq.gptq_quantize(W, H, 4, 128, act_order=True).Q, gram)
    return {"rtn": rtn, "plain": plain, "act": act, "r_plain": plain / rtn, "r_act": act / rtn,
            "n_loud": len(outliers)}


def _quirk():
    W, H, gram, _ = _layer()
    stale = gptq.gptq_quantize(W, H, 4, 32, blocksize=128)
    fresh = gptq.gptq_quantize(W, H, 4, 32, blocksize=32)
    return {"changed": 100 * (stale.codes != fresh.codes).float().mean().item(),
            "delta": 100 * (_err(W, fresh.Q, gram) / _err(W, stale.Q, gram) - 1)}


def _storage():
    W, H, gram, _ = _layer()
    packed = gptq.pack_autogptq(gptq.gptq_quantize(W, H, 4, 128))
    nbytes = sum(v.numel() * v.element_size() for v in packed.values())
    return {"bpw": 8 * nbytes / W.numel(), "rows": packed["qweight"].shape[0], "cols": packed["qweight"].shape[1]}


question(id="ch06.objective", chapter="ch06", difficulty="easy", tags=("gptq", "objective"),
         question="What does GPTQ minimise, and why can it treat every output row separately?",
         answer="The layer's output error ||XW^T - XQ^T||^2 on calibration inputs, not the weight error. "
                "It is a sum over output rows of (w - q) H (w - q)^T / 2 with the same H = 2 X^T X for every "
                "row, so rows are independent problems sharing one Hessian. On the chapter's outlier layer "
                "(4-bit, group 128) this brings the output error on the calibration tokens from {rtn:.5f} (RTN) to {plain:.5f}.",
         follow_ups=("Why is the Hessian independent of W?", "What happens to a column whose input is always 0?"),
         quiz=Quiz(prompt="What does GPTQ minimise?", kind="choice", options=("the weight error ||W - Q||^2", "the layer output error ||XW^T - XQ^T||^2 on calibration inputs", "the model's perplexity", "the KL divergence of the logits"), correct=1),
    compute=_act_order, chain="gptq-deep-dive")

question(id="ch06.tricks", chapter="ch06", difficulty="medium", tags=("gptq", "obq", "cholesky"),
         question="What are GPTQ's three changes to Optimal Brain Quantization, and what does each buy?",
         answer="(1) One fixed column order for all rows, so the inverse-Hessian eliminations are shared instead of "
                "done per row; (2) lazy batch updates: apply the errors of a block of columns to later columns in "
                "one matrix product, turning memory-bound rank-1 updates into a GEMM; (3) read the needed rows of "
                "the eliminated inverse Hessian from one Cholesky factor of H^-1, which is exact (elimination of an "
                "SPD matrix is Cholesky) and numerically stable. Storage stays what RTN needs: {bpw:.3f} bits per "
                "weight at 4-bit group 128 in the AutoGPTQ layout (qweight is {rows} x {cols} int32).",
         follow_ups=("Why add damping before the Cholesky?", "Which part dominates the run time on a CPU?"),
         compute=_storage)

question(id="ch06.act_order", chapter="ch06", difficulty="medium", tags=("gptq", "act-order", "outliers"),
         question="What is act-order (desc_act) and when does it help?",
         answer="Quantize columns in order of decreasing diag(H), i.e. loud input channels first, while many "
                "columns remain to absorb their error. On a layer with {n_loud} channels ten times louder than the "
                "rest, GPTQ/RTN error goes from {r_plain:.2f} to {r_act:.2f} at 4-bit group 128. Cost: with groups, "
                "g_idx is no longer monotone, so kernels gather scales per input channel (or use static groups).",
         follow_ups=("What do static groups change?", "Why does act-order help more with loud input channels?"),
         compute=_act_order)

question(id="ch06.quirk", chapter="ch06", difficulty="hard", tags=("gptq", "implementation"),
         question="In the reference GPTQ code, which weights are a group's scale and zero computed from, "
                  "and does it matter?",
         answer="From W[:, c:c+gs] outside the current block, which lacks the in-block updates (they are applied "
                "lazily at the block's end): with groups of 32 in blocks of 128, groups 2-4 of a block see stale "
                "weights. Using fresh weights changes {changed:.1f} % of the 4-bit codes on the chapter's layer but "
                "moves the output error by only {delta:+.2f} %: it matters for bit-exact reproduction, not quality.",
         follow_ups=("How would you test that your GPTQ matches the reference bit for bit?",
                     "Would you keep the quirk in a new implementation?"),
         compute=_quirk)


# --- more questions ------------------------------------------------------------------------

DAMPS = (1e-4, 0.01, 0.1, 1.0)
CALIB_TOKENS = (64, 256, 1024)  # calibration sizes of the overfitting probe (the layer has 2048 tokens)


@lru_cache(maxsize=1)
def _bits():
    W, H, gram, _ = _layer()
    out = {}
    for bits in (4, 3, 2):
        r = _err(W, gptq.rtn_quantize(W, bits, 128, True).Q, gram)
        g = _err(W, gptq.gptq_quantize(W, H, bits, 128).Q, gram)
        out[f"r{bits}"], out[f"g{bits}"], out[f"x{bits}"] = r, g, r / g
    return out


question(id="ch06.low_bits", chapter="ch06", difficulty="medium", tags=("gptq", "bits", "rtn"),
         question="Does GPTQ's advantage over round-to-nearest grow or shrink as the bit width drops?",
         answer="The absolute gap grows while the ratio shrinks. On the chapter's layer (groups of 128, "
                "symmetric, error on the calibration tokens): 4 bits RTN {r4:.4f} vs GPTQ {g4:.4f} ({x4:.2f}x); "
                "3 bits {r3:.4f} vs {g3:.4f} ({x3:.2f}x); 2 bits {r2:.4f} vs {g2:.4f} ({x2:.2f}x). Compensation "
                "removes more error when each rounding is coarse, but at 2 bits the grid is too coarse for any "
                "reordering of errors to save the layer. The GPTQ paper's largest model-level gains are at 3 bits.",
         follow_ups=("Why does 2-bit GPTQ still fail on real models?", "What would you try instead of GPTQ at 2 bits?"), compute=_bits)


@lru_cache(maxsize=1)
def _damp():
    W, H, gram, _ = _layer()
    out = {f"d{i}": _err(W, gptq.gptq_quantize(W, H, 4, 128, percdamp=d).Q, gram) for i, d in enumerate(DAMPS)}
    ev = torch.linalg.eigvalsh(H.double())
    out["cond"] = float(ev.max() / ev.min())
    return out


question(id="ch06.damping", chapter="ch06", difficulty="medium", tags=("gptq", "numerics", "cholesky"),
         question="What is GPTQ's damping (percdamp), and what happens if it is too small or too large?",
         answer="GPTQ adds lambda = percdamp x mean(diag H) to the diagonal before inverting H = 2 X^T X: with "
                "few calibration tokens or dead input channels H is singular or badly conditioned (here its "
                "condition number is {cond:.3g}) and the Cholesky fails or amplifies noise. Larger damping pulls "
                "GPTQ toward RTN. On the chapter's layer, 4-bit g128: percdamp 1e-4 {d0:.5f}, 0.01 {d1:.5f}, 0.1 "
                "{d2:.5f}, 1.0 {d3:.5f}. 0.01 is a safe default; raise it when the Cholesky fails.",
         follow_ups=("Why do dead channels (all-zero inputs) make H singular, and what does the reference do?", "What does the damping do to the update of the remaining columns?"),
         compute=_damp)


@lru_cache(maxsize=1)
def _overfit():
    W, H, gram, _ = _layer()
    _, X, _ = gptq.synthetic_layer()
    X = X.astype(np.float64)
    test = X[CALIB_TOKENS[-1]:]
    g_test = test.T @ test
    out = {"n_test": len(test)}
    for n in CALIB_TOKENS:
        Q = gptq.gptq_quantize(W, gptq.hessian(X[:n].astype(np.float32)), 4, 128).Q
        out[f"c{n}"] = _err(W, Q, X[:n].T @ X[:n])
        out[f"t{n}"] = _err(W, Q, g_test)
    out["rtn"] = _err(W, gptq.rtn_quantize(W, 4, 128, True).Q, g_test)
    return out


question(id="ch06.overfit", chapter="ch06", difficulty="hard", tags=("gptq", "calibration", "overfitting"),
         question="Can GPTQ overfit its calibration data? How would you show it?",
         answer="Yes: it minimises the error on the calibration inputs through a full d x d Hessian estimated "
                "from them, so compare calibration error with held-out error ({n_test} held-out tokens), 4-bit "
                "g128: 64 calibration tokens give {c64:.4f} on them vs {t64:.4f} held out; 256 give {c256:.4f} vs "
                "{t256:.4f}; 1024 give {c1024:.4f} vs {t1024:.4f}. RTN, which sees no data, gets {rtn:.4f} held "
                "out: better than GPTQ at every size here. This layer's inputs are independent Gaussians, so the "
                "off-diagonal of H is pure sampling noise and GPTQ fits it. Real activations are strongly "
                "correlated, which is what GPTQ exploits; the lesson is to always report held-out error (and "
                "held-out perplexity), never the calibration objective.",
         follow_ups=("Why do 128 x 2048 calibration tokens suffice for a 4096-wide layer?", "How would you detect overfitting on a real model without labels?"),
         compute=_overfit, chain="gptq-deep-dive", after="ch06.objective")


def _formats():
    W, H, _, _ = _layer()
    r = gptq.gptq_quantize(W, H, 4, 128, sym=False)
    v1, v2 = gptq.pack_autogptq(r, "gptq"), gptq.pack_autogptq(r, "gptq_v2")
    z1 = gptq.unpack_autogptq(v1, "gptq").zeros
    z_from_v1_as_v2 = gptq.unpack_autogptq(v1, "gptq_v2").zeros
    return {"same_q": bool(torch.equal(v1["qweight"], v2["qweight"])),
            "diff": float((z1 - z_from_v1_as_v2).float().mean()),
            "qz": tuple(v1["qzeros"].shape), "qw": tuple(v1["qweight"].shape)}


question(id="ch06.zero_off_by_one", chapter="ch06", difficulty="hard", tags=("gptq", "checkpoint", "implementation"),
         question="Two GPTQ checkpoints of the same model load fine but one gives garbage. Both have qweight, "
                  "qzeros and scales. What format detail do you check first?",
         answer="Whether qzeros stores zero - 1 (AutoGPTQ's original 'gptq' format, still what transformers "
                "loads) or the zero itself ('gptq_v2'). The packed codes are identical (same qweight: {same_q}; "
                "qweight {qw}, qzeros {qz} int32), but reading a v1 file as v2 shifts every zero by {diff:+.0f}, "
                "a whole step on every weight. Check the checkpoint's quantize_config (checkpoint_format) and "
                "test one layer's dequantized weight against the original.",
         follow_ups=("Why did the off-by-one exist in the first place?", "How would you write a loader that detects the format by itself?"),
         compute=_formats)


def _hessian_diag():
    W, H, _, outliers = _layer()
    d = torch.diagonal(H).double()
    loud = torch.zeros(d.numel(), dtype=torch.bool)
    loud[torch.as_tensor(outliers)] = True
    return {"ratio": float(d[loud].mean() / d[~loud].mean()), "n": int(loud.sum()), "d": d.numel()}


question(id="ch06.hessian", chapter="ch06", difficulty="easy", tags=("gptq", "hessian"),
         question="What is the 'Hessian' in GPTQ, and what does its diagonal tell you?",
         answer="H = 2 X^T X over the calibration inputs X of the layer: the second derivative of the output "
                "error with respect to each row of W. It depends only on the inputs, so one H serves all rows. "
                "Its diagonal is the energy of each input channel: on the chapter's layer the {n} loud channels "
                "(of {d}) have {ratio:.0f}x the diagonal of the others, so errors on their columns cost that much "
                "more, and GPTQ (with act-order) handles them first.",
         follow_ups=("What do the off-diagonal entries let GPTQ do that AWQ cannot?", "Why is it called a Hessian if it never looks at W?"),
         compute=_hessian_diag)
