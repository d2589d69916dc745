"""Interview questions of chapter 6, *GPTQ*; every number is computed by qlearn."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from qlearn import gptq
from qlearn.interview import question


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
                "(4-bit, group 128) this brings the output error from {rtn:.5f} (RTN) to {plain:.5f}.",
         follow_ups=("Why is the Hessian independent of W?", "What happens to a column whose input is always 0?"),
         compute=_act_order)

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
         follow_ups=("What do static groups change?",),
         compute=_act_order)

question(id="ch06.quirk", chapter="ch06", difficulty="hard", tags=("gptq", "implementation"),
         question="In the reference GPTQ code, which weights are a group's scale and zero computed from, "
                  "and does it matter?",
         answer="From W[:, c:c+gs] outside the current block, which lacks the in-block updates (they are applied "
                "lazily at the block's end): with groups of 32 in blocks of 128, groups 2-4 of a block see stale "
                "weights. Using fresh weights changes {changed:.1f} % of the 4-bit codes on the chapter's layer but "
                "moves the output error by only {delta:+.2f} %: it matters for bit-exact reproduction, not quality.",
         compute=_quirk)
