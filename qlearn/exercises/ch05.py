"""Exercises of chapter 5, *Weight-only PTQ*: storage cost of groups, RTN per group, dynamic int8."""

from __future__ import annotations

import numpy as np
import torch

from qlearn import gptq, uniform
from qlearn.exercises import call_student, compare_close, exercise

SCALE_BITS = 16   # fp16 scale per group


@exercise("ch05.bits_per_weight",
          hint="bits + (16 for the fp16 scale + bits for the zero point when asymmetric) / group_size; "
               "group_size -1 means one group per row of n_cols weights")
def _bpw(fn):
    rng = np.random.default_rng()
    for _ in range(6):
        bits, gs = int(rng.integers(2, 9)), int(rng.choice([-1, 32, 64, 128, 256]))
        n_cols, sym = int(rng.choice([512, 1024, 4096])), bool(rng.integers(2))
        g = n_cols if gs == -1 else gs
        expected = bits + (SCALE_BITS + (0 if sym else bits)) / g
        compare_close(f"bits_per_weight(bits={bits}, group_size={gs}, n_cols={n_cols}, sym={sym})",
                      call_student(fn, bits, gs, n_cols, sym), expected, rtol=1e-12)


@exercise("ch05.rtn_per_group",
          hint="for each run of group_size columns: absmax a = max(|w|) over the group (range contains 0), "
               "scale = 2a / (2**bits - 1), zero = 2**(bits-1), q = clamp(round(w/scale) + zero, 0, 2**bits - 1), "
               "w_hat = scale * (q - zero); use float32 and np.round")
def _rtn(fn):
    rng = np.random.default_rng()
    for bits, gs in [(4, 32), (3, 16), (8, 64), (2, 32)]:
        W = rng.standard_normal((8, 128)).astype(np.float32)
        expected = gptq.rtn_quantize(torch.from_numpy(W), bits, gs, True).Q.numpy()
        compare_close(f"rtn_per_group(W, bits={bits}, group_size={gs})",
                      call_student(fn, W.copy(), bits, gs), expected, rtol=1e-5, atol=1e-6)


@exercise("ch05.dynamic_int8",
          hint="per row: scale = max|x| / 127 (from this x, at run time); return round(x/scale) clipped to "
               "[-127, 127], times scale")
def _dyn(fn):
    rng = np.random.default_rng()
    for _ in range(4):
        x = (rng.standard_normal((int(rng.integers(2, 9)), 32)) * rng.uniform(0.1, 10, (1, 1))).astype(np.float32)
        # qlearn.uniform's restricted symmetric int8 grid, one scale per row
        expected = uniform.fake_quantize(x, 8, block_size=(1, x.shape[1]), mapping="symmetric")
        compare_close("dynamic_int8(x)", call_student(fn, x.copy()), expected, rtol=1e-5, atol=1e-6)
