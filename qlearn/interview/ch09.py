"""Interview questions of chapter 9, *NF4 and QLoRA*."""

from __future__ import annotations

import numpy as np

from qlearn import nf4
from qlearn.interview import question


def _gauss_errors():
    x = np.random.default_rng(0).standard_normal((128, 1024)).astype(np.float32)
    e = {qt: float(np.sum((nf4.fake_quantize_4bit(x, 64, qt) - x) ** 2) / np.sum(x ** 2))
         for qt in ("nf4", "int4", "fp4")}
    return {"nf4": e["nf4"], "int4": e["int4"], "fp4": e["fp4"], "ratio": e["int4"] / e["nf4"]}


question(
    id="ch09.why_nf4", chapter="ch09", difficulty="easy", tags=("nf4", "4-bit"),
    question="Why does NF4 use quantiles of a normal distribution instead of an even INT4 grid?",
    answer="Weights normalized by their block absmax are roughly normal, so most sit near 0. "
           "Quantile levels give each level about the same share of the weights, which puts "
           "more levels where the weights are. On N(0,1) blocks of 64 the relative MSE is "
           "{nf4:.4f} for NF4, {int4:.4f} for INT4 ({ratio:.2f}x) and {fp4:.4f} for FP4. NF4 also "
           "keeps an exact zero, so it is asymmetric: 7 negative and 8 positive levels.",
    follow_ups=("Why is the outermost probability 0.9677 and not 1?",
                "When would NF4 be worse than INT4?"),
    compute=_gauss_errors)

question(
    id="ch09.double_quant", chapter="ch09", difficulty="medium",
    tags=("nf4", "double-quantization", "memory"),
    question="QLoRA's double quantization is often summarized as 'FP32 to FP8'. What exactly is "
             "quantized, and how many bits per parameter does it save with blocks of 64?",
    answer="Only the per-block absmax constants are quantized, not the weights. After their "
           "mean is subtracted they become 8-bit codes of the signed dynamic map (not a float8 "
           "format), with one float32 scale per 256 blocks. The constants' cost falls from "
           "{before:.3f} to {after:.4f} bits per parameter, a saving of {saved:.4f}, which is "
           "{gib65:.2f} GiB on a 65B model.",
    follow_ups=("Why subtract the mean first?",
                "Why do the nested codes differ between bitsandbytes' CPU and GPU?"),
    compute=lambda: {"before": nf4.bits_per_weight(64) - 4,
                     "after": nf4.bits_per_weight(64, True) - 4,
                     "saved": nf4.bits_per_weight(64) - nf4.bits_per_weight(64, True),
                     "gib65": (nf4.bits_per_weight(64) - nf4.bits_per_weight(64, True))
                              * 65e9 / 8 / 2**30})

question(
    id="ch09.qlora_memory", chapter="ch09", difficulty="medium", tags=("qlora", "lora", "memory"),
    question="Estimate the weight memory of QLoRA fine-tuning of a 7B model with NF4, double "
             "quantization, and 40M LoRA parameters trained with AdamW.",
    answer="Base: {bpw:.3f} bits per weight x 7e9 = {base_gib:.2f} GiB. LoRA: 4 bytes of weight, "
           "4 of gradient and 8 of AdamW moments per trainable parameter, 16 x 40e6 = "
           "{lora_gib:.2f} GiB. Total about {total_gib:.2f} GiB before activations, against "
           "{fp16_gib:.1f} GiB just to hold the weights in fp16.",
    follow_ups=("Where does the rest of the memory go in practice?",
                "Why does the LoRA B matrix start at zero?"),
    compute=lambda: {"bpw": nf4.bits_per_weight(64, True),
                     "base_gib": nf4.bits_per_weight(64, True) * 7e9 / 8 / 2**30,
                     "lora_gib": 16 * 40e6 / 2**30,
                     "total_gib": nf4.bits_per_weight(64, True) * 7e9 / 8 / 2**30
                                  + 16 * 40e6 / 2**30,
                     "fp16_gib": 2 * 7e9 / 2**30})

question(
    id="ch09.ties", chapter="ch09", difficulty="hard", tags=("nf4", "bit-exact", "bitsandbytes"),
    question="You reimplement NF4 quantization and almost every byte matches bitsandbytes, but "
             "a few do not. What details do you check?",
    answer="Scaling by x * (1/absmax) instead of x / absmax (the two round differently). The "
           "tie rule: bitsandbytes counts midpoints strictly below the value, so a value exactly "
           "on a midpoint goes to the lower code; all {n_mid} NF4 midpoints are float32 means "
           "of adjacent levels. High-nibble-first packing. A short last block, which is divided "
           "and stores its clamped absmax. FP4's duplicated zero, and on the CPU the "
           "lookup-table nested quantizer, which differs from an exact nearest search.",
    follow_ups=("How would you build test inputs that sit exactly on the midpoints?",),
    compute=lambda: {"n_mid": int(nf4.NF4_CODE.size - 1)})
