"""Interview questions of chapter 5, *Weight-only PTQ*; every number is computed by qlearn."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from qlearn import gptq
from qlearn.interview import question

SCALE_BITS = 16


def _bpw(bits, gs, sym):
    return bits + (SCALE_BITS + (0 if sym else bits)) / gs


@lru_cache(maxsize=1)
def _granularity():
    W, X, _ = gptq.synthetic_layer()
    W = torch.from_numpy(W)
    W[0, 0] = 8 * W.abs().max()                         # one spiked weight
    gram = X.astype(np.float64).T @ X.astype(np.float64)
    per_tensor = gptq.rtn_quantize(W.reshape(1, -1), 4, -1, True).Q.reshape(W.shape)
    e = {k: gptq.relative_output_error(None, W, Q, gram=gram) for k, Q in
         (("tensor", per_tensor), ("channel", gptq.rtn_quantize(W, 4, -1, True).Q),
          ("group", gptq.rtn_quantize(W, 4, 128, True).Q))}
    return e


question(id="ch05.group_cost", chapter="ch05", difficulty="easy", tags=("rtn", "group size", "storage"),
         question="How many bits per weight does 4-bit asymmetric quantization with group size 128 really cost, "
                  "and with group size 32?",
         answer="Each group stores an fp16 scale and a 4-bit zero: 4 + 20/128 = {g128:.3f} bits per weight for "
                "g128, {g32:.3f} for g32 (symmetric g128: {g128s:.3f}).",
         follow_ups=("Why do kernels prefer power-of-two group sizes?",),
         compute=lambda: {"g128": _bpw(4, 128, False), "g32": _bpw(4, 32, False), "g128s": _bpw(4, 128, True)})

question(id="ch05.granularity", chapter="ch05", difficulty="medium", tags=("rtn", "outliers"),
         question="Why does one large weight hurt per-tensor quantization so much more than per-group?",
         answer="The scale is set by the absmax of everything sharing it; one spiked weight stretches the grid so "
                "all other weights land on few levels. On the chapter's layer with one spike, 4-bit output error is "
                "{tensor:.4f} per tensor, {channel:.4f} per channel and {group:.4f} per group of 128.",
         follow_ups=("What does clipping the range trade off?",),
         compute=_granularity)

question(id="ch05.dynamic", chapter="ch05", difficulty="easy", tags=("dynamic quantization", "activations"),
         question="What is dynamic quantization and when would you use it instead of static?",
         answer="Activations are quantized at run time with scales computed from the current batch or token, so no "
                "calibration is needed and each token uses its own range; the cost is computing absmax on the fly. "
                "Static quantization fixes activation scales from calibration data ahead of time (cheaper, but one "
                "scale must cover the loudest token). Weight-only schemes (GPTQ, AWQ at {bpw:.3f} bits per weight "
                "for 4-bit g128 asymmetric) do not quantize activations at all.",
         compute=lambda: {"bpw": _bpw(4, 128, False)})
