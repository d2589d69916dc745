"""Exercises of chapter 12, quantizing the KV cache. Each check runs the student's code on fresh
inputs and compares it with qlearn.kvcache (KIVI's two axes, the residual window)."""
from __future__ import annotations

import numpy as np
import torch

from qlearn import kvcache as kc
from qlearn.exercises import Mismatch, call_student, compare_close, compare_equal, exercise

HEAD_DIM = 64


def _keys(rng, tokens):
    x = rng.standard_normal((tokens, HEAD_DIM)).astype(np.float32)
    x[:, rng.integers(0, HEAD_DIM, 3)] *= 10          # outlier channels, as real keys have
    return x


def _reference(x, fmt):
    t = torch.from_numpy(x)[None, None]               # (1, 1, tokens, head_dim)
    return kc.decode(kc.encode(t, fmt), fmt, HEAD_DIM)[0, 0].numpy()


@exercise("ch12.kivi_keys", hint="reshape to (tokens // group, group, channels); per group and "
                                 "channel lo = min(x, 0), hi = max(x, 0), scale = (hi - lo) / (2**bits"
                                 " - 1) rounded to float16, zero = clip(-round(lo / scale)); codes "
                                 "clip(round(x / scale) + zero, 0, 2**bits - 1)")
def kivi_keys(fn):
    """fn(k: (tokens, head_dim) float32, bits, group) -> dequantized keys, same shape: one
    asymmetric scale per channel for every group of `group` consecutive tokens."""
    rng = np.random.default_rng()
    bits, group = int(rng.choice([2, 4])), int(rng.choice([8, 16, 32]))
    k = _keys(rng, 4 * group)
    got = call_student(fn, k.copy(), bits, group, what="kivi_keys(k, bits, group)")
    fmt = kc.cache_format(f"int{bits}", HEAD_DIM, "channel", group, symmetric=False,
                          rotate=False)
    compare_close(f"kivi_keys(k, bits={bits}, group={group})",
                  np.asarray(got, dtype=np.float32), _reference(k, fmt), rtol=1e-5, atol=1e-5)


@exercise("ch12.kivi_values", hint="the same grid as the keys, but the groups run along the "
                                   "channels of each token: reshape to (tokens, channels // group, "
                                   "group)")
def kivi_values(fn):
    """fn(v: (tokens, head_dim) float32, bits, group) -> dequantized values: one asymmetric scale
    per token for every group of `group` consecutive channels."""
    rng = np.random.default_rng()
    bits, group = int(rng.choice([2, 4])), int(rng.choice([16, 32, 64]))
    v = rng.standard_normal((24, HEAD_DIM)).astype(np.float32)
    got = call_student(fn, v.copy(), bits, group, what="kivi_values(v, bits, group)")
    fmt = kc.cache_format(f"int{bits}", HEAD_DIM, "token", group, symmetric=False, rotate=False)
    compare_close(f"kivi_values(v, bits={bits}, group={group})",
                  np.asarray(got, dtype=np.float32), _reference(v, fmt), rtol=1e-5, atol=1e-5)


@exercise("ch12.residual_window", hint="keys: only whole groups that end before the window are "
                                       "quantized, (length - residual) // group * group (never "
                                       "negative); values: every token before the window")
def residual_window(fn):
    """fn(length, residual, group) -> (key tokens quantized, value tokens quantized) for a KIVI
    cache holding `length` tokens whose most recent `residual` stay in full precision."""
    rng = np.random.default_rng()
    for _ in range(20):
        length, residual, group = (int(rng.integers(0, 300)), int(rng.integers(0, 130)),
                                   int(rng.choice([8, 16, 32])))
        got = call_student(fn, length, residual, group, what="residual_window(...)")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Mismatch("residual_window must return (keys_quantized, values_quantized)",
                           "a pair of integers", got)
        k_fmt = kc.cache_format("int2", HEAD_DIM, "channel", group, False, residual, False)
        v_fmt = kc.cache_format("int2", HEAD_DIM, "token", 32, False, residual, False)
        want = tuple(max(length - f.residual, 0) // f.chunk() * f.chunk()
                     for f in (k_fmt, v_fmt))
        compare_equal(f"residual_window({length}, {residual}, {group})",
                      tuple(int(g) for g in got), want)
