"""Exercises of chapter 7, *AWQ*: the quantizer, the activation statistic, the scales, the clip."""

from __future__ import annotations

import numpy as np
import torch

from qlearn import awq
from qlearn.exercises import call_student, compare_close, exercise


def _layer(rng: np.random.Generator, out: int = 16, n_in: int = 256, tokens: int = 512):
    W = torch.from_numpy(rng.standard_normal((out, n_in)).astype(np.float32) / 16)
    X = rng.standard_normal((tokens, n_in)).astype(np.float32)
    X[:, rng.choice(n_in, 3, replace=False)] *= float(rng.uniform(5, 20))
    return W, torch.from_numpy(X)


@exercise("ch07.pseudo_quantize",
          hint="per group of g consecutive columns: scale = clamp(max - min, 1e-5) / (2^b - 1), "
               "zero = clamp(-round(min / scale), 0, 2^b - 1), "
               "w_hat = (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero) * scale")
def _pseudo_quantize(fn):
    rng = np.random.default_rng()
    for bits, gs in [(4, 128), (3, 64), (2, 32), (8, 256)]:
        W, _ = _layer(rng)
        got = call_student(fn, W.clone(), bits, gs)
        compare_close(f"pseudo_quantize(W, bits={bits}, group_size={gs})", got,
                      awq.pseudo_quantize(W, bits, gs)[0], rtol=1e-6, atol=1e-7)


@exercise("ch07.x_mean_abs", hint="the mean over tokens (rows) of |x|, one value per input channel")
def _x_mean(fn):
    rng = np.random.default_rng()
    _, X = _layer(rng)  # qlearn's statistic from the scale search (it does not depend on W)
    want = awq.search_scale(torch.ones(2, X.shape[1]), X, group_size=-1).x_mean_abs
    compare_close("x_mean_abs(X)", call_student(fn, X.clone()), want, rtol=1e-5)



@exercise("ch07.candidate_scales",
          hint="s = clamp(x_mean ** ratio, min=1e-4), then divide by sqrt(max(s) * min(s))")
def _candidate(fn):
    rng = np.random.default_rng()
    _, X = _layer(rng)
    x_mean = X.abs().mean(0)
    for ratio in (0.0, 0.3, float(rng.uniform(0, 1))):
        compare_close(f"candidate_scales(x_mean, {ratio:.3f})", call_student(fn, x_mean.clone(), ratio),
                      awq.candidate_scales(x_mean, ratio), rtol=1e-5)


@exercise("ch07.clip_group",
          hint="for f in 1.0, 0.95, ..., 0.55: m = f * max|w|, w_c = clamp(w, -m, m), quantize w_c as ONE "
               "group, err = mean over tokens of (x @ w_hat - x @ w)^2; keep the m of the smallest err "
               "(strict <, so the first f wins ties). Use every token (here exactly 512).")
def _clip(fn):
    rng = np.random.default_rng()
    for bits in (4, 3):
        W, X = _layer(rng, out=1, n_in=128, tokens=awq.N_SAMPLE_TOKEN)
        want = float(awq.search_clip(W, X, bits, 128)[0, 0])
        got = call_student(fn, W[0].clone(), X.clone(), bits)
        compare_close(f"best clip threshold for one group ({bits}-bit)", float(got), want, rtol=1e-6)
