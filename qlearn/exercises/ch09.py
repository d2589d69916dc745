"""Exercises of chapter 9, *NF4 and QLoRA*."""

from __future__ import annotations

import numpy as np
import torch

from qlearn import nf4
from qlearn.exercises import Mismatch, call_student, compare_close, compare_equal, exercise
from qlearn.lora import LoRALinear


@exercise("ch09.nf4_levels",
          hint="8 quantiles Phi^-1(p) for p = linspace(0.9677083, 0.5, 9)[:-1], the negatives of "
               "7 for linspace(0.9677083, 0.5, 8)[:-1], a 0; sort and divide by the maximum")
def _levels(fn):
    got = call_student(fn)
    compare_close("nf4_levels()", got, nf4.NF4_CODE, rtol=0, atol=1e-6)


@exercise("ch09.quantize_block_nf4",
          hint="s = x * (1 / absmax) in float32, then the index is the number of NF4 midpoints "
               "strictly below s (np.searchsorted(mid, s, side='left')): ties go to the lower code")
def _block(fn):
    rng = np.random.default_rng()
    mid = ((nf4.NF4_CODE[:-1] + nf4.NF4_CODE[1:]) / np.float32(2)).astype(np.float32)
    for trial in range(4):
        x = (rng.standard_normal(64) * rng.uniform(0.01, 3)).astype(np.float32)
        if trial == 3:  # values exactly on midpoints: the tie rule matters
            x[1:16] = mid
            x[0] = 1.0
        packed, state = nf4.quantize_4bit(x, 64, "nf4")
        exp = np.empty(64, np.uint8)
        exp[0::2], exp[1::2] = packed >> 4, packed & 15
        got = call_student(fn, x)
        compare_equal("nibbles of quantize_block_nf4(x)", np.asarray(got).astype(np.uint8), exp)


@exercise("ch09.pack_nibbles", hint="byte k = (q[2k] << 4) | q[2k+1]: the FIRST element goes in "
                                    "the HIGH nibble")
def _pack(fn):
    rng = np.random.default_rng()
    for n in (2, 16, int(rng.integers(1, 200)) * 2):
        q = rng.integers(0, 16, n).astype(np.uint8)
        exp = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
        compare_equal(f"pack_nibbles(q) for {n} codes",
                      np.asarray(call_student(fn, q)).astype(np.uint8), exp)


@exercise("ch09.double_quant_saving",
          hint="without: 32/blocksize bits per parameter; with: 8/blocksize + 32/(blocksize*256)")
def _saving(fn):
    for bs in (32, 64, 128, 256):
        exp = nf4.bits_per_weight(bs) - nf4.bits_per_weight(bs, compress_statistics=True)
        compare_close(f"double_quant_saving({bs})", call_student(fn, bs), exp, rtol=1e-9)


@exercise("ch09.lora_forward",
          hint="y = x @ W.T + (alpha / r) * (x @ A.T) @ B.T, with r = A.shape[0]")
def _lora(fn):
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    for r in (1, 4, 8):
        d_in, d_out = 32, 24
        base = torch.nn.Linear(d_in, d_out, bias=False)
        layer = LoRALinear(base, r=r, alpha=2.0 * r + 1, generator=gen)
        with torch.no_grad():
            layer.lora_B.normal_(generator=gen)
        x = torch.randn(5, d_in, generator=gen)
        with torch.no_grad():
            exp = layer(x)
            got = call_student(fn, x, base.weight.detach(), layer.lora_A.detach(),
                               layer.lora_B.detach(), layer.alpha)
        compare_close(f"lora_forward (r={r})", got, exp, rtol=1e-5, atol=1e-5)
