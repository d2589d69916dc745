"""Exercises of chapter 11, quantization-aware training. Each check runs the student's code on
fresh inputs and compares it with qlearn.qat."""
from __future__ import annotations

import numpy as np
import torch

from qlearn import qat
from qlearn.exercises import Mismatch, call_student, compare_close, compare_equal, exercise


def _rng():
    return np.random.default_rng()


@exercise("ch11.ste_backward", hint="the unclamped code is round(x / scale) (np.rint: half to even); "
                                    "return grad_out where qmin <= code <= qmax and 0 elsewhere")
def ste_backward(fn):
    """fn(grad_out, x, scale, qmin, qmax) -> grad_x; all float32 arrays of x's shape, scale > 0."""
    rng = _rng()
    for bits in (2, 4):
        x = (rng.standard_normal(300) * 2).astype(np.float32)
        scale = np.float32(rng.uniform(0.2, 0.6))
        grad_out = rng.standard_normal(300).astype(np.float32)
        qmax = 2 ** (bits - 1) - 1
        xt = torch.from_numpy(x).requires_grad_(True)
        qat.fake_quantize_ste(xt, bits, None, "symmetric", scale=torch.tensor([scale])).backward(
            torch.from_numpy(grad_out))
        got = call_student(fn, grad_out.copy(), x.copy(), scale, -qmax, qmax,
                           what="ste_backward(grad_out, x, scale, qmin, qmax)")
        compare_equal(f"ste_backward at {bits} bits", np.asarray(got, np.float32),
                      xt.grad.numpy())


@exercise("ch11.lsq_step_gradient", hint="v = x / s; inside (-q_n < v < q_p) it is round(v) - v; "
                                         "-q_n where v <= -q_n, q_p where v >= q_p")
def lsq_step_gradient(fn):
    """fn(x: float32 array, s: float, q_n: int, q_p: int) -> d x_hat / d s per element."""
    rng = _rng()
    x = (rng.standard_normal(400) * 3).astype(np.float32)
    s = float(rng.uniform(0.3, 1.0))
    for q in (1, 3, 7):
        got = call_student(fn, x.copy(), s, q, q, what="lsq_step_gradient(x, s, q_n, q_p)")
        exp = qat.lsq_step_gradient(torch.from_numpy(x), torch.tensor(s), q, q).numpy()
        compare_close(f"LSQ step gradient with Q_N = Q_P = {q}", np.asarray(got, np.float64),
                      exp.astype(np.float64), rtol=1e-5, atol=1e-5)


@exercise("ch11.ternarize", hint="gamma = max(mean(|W|), 1e-5) in float32; codes = "
                                 "clip(rint(W / gamma), -1, 1) as int8")
def ternarize(fn):
    """fn(W: (out, in) float32) -> (codes int8 in {-1, 0, 1}, gamma float)."""
    w = (_rng().standard_normal((32, 64)) * 0.05).astype(np.float32)
    got = call_student(fn, w.copy(), what="ternarize(W)")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mismatch("ternarize must return (codes, gamma)", "a pair", got)
    ref = qat.ternarize(w)
    compare_close("gamma (the absmean scale)", np.float64(got[1]),
                  np.float64(ref.scale.ravel()[0]), rtol=1e-6)
    codes = np.asarray(got[0])
    if codes.shape != w.shape:
        raise Mismatch("codes: wrong shape", w.shape, codes.shape)
    # the same rule with the student's own gamma: a last-ulp difference in the mean is allowed
    exp = np.clip(np.rint(w / np.float32(got[1])), -1, 1).astype(np.int64)
    compare_equal("ternary codes", codes.astype(np.int64), exp)
    if (np.abs(exp - ref.codes.astype(np.int64)) > 0).mean() > 0.01:
        raise Mismatch("ternary codes", ref.codes, codes)
