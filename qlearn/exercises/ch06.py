"""Exercises of chapter 6, *GPTQ*: the min/max quantizer, the OBQ update, the Cholesky trick, act-order."""

from __future__ import annotations

import numpy as np
import torch

from qlearn import gptq
from qlearn.exercises import call_student, compare_close, compare_equal, exercise


def _spd(rng, n):
    X = rng.standard_normal((4 * n, n))
    X[:, rng.integers(n)] *= 5                       # one loud channel
    return 2 * X.T @ X


@exercise("ch06.find_params",
          hint="xmin = min(row min, 0), xmax = max(row max, 0); sym: xmax = max(|xmin|, xmax), xmin = -xmax, "
               "zero = 2**(bits-1); asym: zero = round(-xmin/scale); scale = (xmax - xmin)/(2**bits - 1)")
def _find_params(fn):
    rng = np.random.default_rng()
    for bits, sym in [(4, True), (4, False), (3, False), (8, True), (2, True)]:
        W = rng.standard_normal((6, 16)).astype(np.float32)
        W[0] = np.abs(W[0])                           # an all-positive row: the range still contains 0
        got = call_student(fn, W.copy(), bits, sym)
        scale, zero = gptq.find_params(torch.from_numpy(W), bits, sym)
        compare_close(f"scale of find_params(W, bits={bits}, sym={sym})", np.asarray(got[0]), scale.numpy(), rtol=1e-6)
        compare_close(f"zero of find_params(W, bits={bits}, sym={sym})", np.asarray(got[1]), zero.numpy(), rtol=1e-6)


@exercise("ch06.obq_update",
          hint="delta = -(w[p] - q) / Hinv[p, p] * Hinv[:, p]; return w + delta (then w[p] equals q)")
def _obq(fn):
    rng = np.random.default_rng()
    for _ in range(4):
        n = int(rng.integers(4, 12))
        Hinv = np.linalg.inv(_spd(rng, n))
        w = rng.standard_normal(n)
        p = int(rng.integers(n))
        q = float(np.round(w[p] * 4) / 4)
        expected = w - (w[p] - q) / Hinv[p, p] * Hinv[:, p]
        compare_close(f"obq_update(w, Hinv, p={p}, q={q})", call_student(fn, w.copy(), Hinv.copy(), p, q),
                      expected, rtol=1e-8, atol=1e-10)


@exercise("ch06.cholesky_rows",
          hint="U is the upper Cholesky factor of inv(H): U.T @ U == inv(H); "
               "np.linalg.cholesky gives the lower factor L (L @ L.T), so U = L.T of inv(H)")
def _chol(fn):
    rng = np.random.default_rng()
    for n in (3, 5, 9):
        H = _spd(rng, n)
        L = np.linalg.cholesky(np.linalg.inv(H))
        compare_close(f"cholesky_rows(H) for a {n}x{n} H", call_student(fn, H.copy()), L.T, rtol=1e-6, atol=1e-9)


@exercise("ch06.act_order_perm",
          hint="sort the column indices by diag(H), largest first (np.argsort(-np.diag(H), kind='stable'))")
def _perm(fn):
    rng = np.random.default_rng()
    for n in (5, 16, 40):
        H = _spd(rng, n)
        expected = np.argsort(-np.diag(H), kind="stable")
        compare_equal(f"act_order_perm(H) for a {n}x{n} H", np.asarray(call_student(fn, H.copy())), expected)


@exercise("ch06.gptq_vs_rtn",
          hint="quantize the medium layer (gptq.synthetic_layer()) with rtn_quantize and gptq_quantize at "
               "3 bits, group 128, and divide the two relative_output_error values")
def _ratio(answer):
    W, X, _ = gptq.synthetic_layer()
    W = torch.from_numpy(W)
    H = gptq.hessian(X)
    e_g = gptq.relative_output_error(X, W, gptq.gptq_quantize(W, H, 3, 128).Q)
    e_r = gptq.relative_output_error(X, W, gptq.rtn_quantize(W, 3, 128, True).Q)
    compare_close("GPTQ / RTN output error, 3-bit g128 sym, no act-order", answer, e_g / e_r, rtol=1e-3)
