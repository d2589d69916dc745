"""Exercises of chapter 8, *SmoothQuant and LLM.int8()*."""

from __future__ import annotations

import numpy as np
import torch

from qlearn import llm_int8, smoothquant as sq
from qlearn.exercises import call_student, compare_close, compare_equal, exercise


def _acts(rng: np.random.Generator, tokens: int = 64, n_in: int = 96) -> torch.Tensor:
    X = rng.standard_normal((tokens, n_in)).astype(np.float32)
    X[:, rng.choice(n_in, 3, replace=False)] *= float(rng.uniform(5, 20))
    return torch.from_numpy(X)


@exercise("ch08.smooth_scales",
          hint="act = max over tokens of |X|, w = max over rows of |W| clamped at 1e-5, "
               "s = clamp(act ** alpha / w ** (1 - alpha), min=1e-5)")
def _smooth(fn):
    rng = np.random.default_rng()
    X = _acts(rng)
    W = torch.from_numpy(rng.standard_normal((40, X.shape[1])).astype(np.float32) / 10)
    for alpha in (0.5, float(rng.uniform(0, 1))):
        want = sq.smooth_scales(sq.act_scales(X), sq.weight_scales(W), alpha)
        compare_close(f"smooth_scales(X, W, alpha={alpha:.3f})", call_student(fn, X.clone(), W.clone(), alpha),
                      want, rtol=1e-5)


@exercise("ch08.per_token_fake_quant",
          hint="scale = clamp(max |x| of the row, 1e-5) / 127; x -> round(x / scale) * scale")
def _per_token(fn):
    rng = np.random.default_rng()
    X = _acts(rng)
    compare_close("per_token_fake_quant(X)", call_student(fn, X.clone()),
                  sq.absmax_fake_quant(X, "per_token"), rtol=1e-6, atol=1e-7)


@exercise("ch08.outlier_cols",
          hint="columns with ANY element |a| >= threshold (>=, not >), as a sorted int64 tensor")
def _outlier_cols(fn):
    rng = np.random.default_rng()
    A = _acts(rng).half()
    A[int(rng.integers(64)), int(rng.integers(96))] = 6.0  # exactly at the threshold
    want = llm_int8.vectorwise_quant(A, 6.0)[2]
    got = call_student(fn, A.clone(), 6.0)
    compare_equal("outlier_cols(A, 6.0)", torch.as_tensor(got).to(torch.int64), want)


@exercise("ch08.vectorwise_quant",
          hint="row absmax (as float32) of the fp16 matrix, codes = round(A * (127 / absmax)) as int8; "
               "return (codes, absmax)")
def _vectorwise(fn):
    rng = np.random.default_rng()
    W = torch.from_numpy(rng.standard_normal((32, 80)).astype(np.float32)).half()
    codes, absmax, _ = llm_int8.vectorwise_quant(W)
    got = call_student(fn, W.clone())
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        compare_equal("vectorwise_quant(W) should return (codes, absmax)", type(got).__name__, "tuple")
    compare_equal("codes", torch.as_tensor(got[0]).to(torch.int8), codes)
    compare_close("absmax", got[1], absmax, rtol=0)
