"""Interview questions for chapter 2, number formats. Every number comes from qlearn.formats."""

import numpy as np

from qlearn import formats as F
from qlearn.interview import question


def _first_missing_integer(fmt: str) -> int:
    ints = np.arange(0, 2 ** 14, dtype=np.float32)
    return int(ints[F.round_to(ints, fmt) != ints][0])


def _limits():
    h, b = F.FORMATS["fp16"], F.FORMATS["bf16"]
    return {"h_max": h.max, "h_min": h.min_normal, "h_sub": h.min_subnormal, "b_max": b.max,
            "b_min": b.min_normal, "h_eps": h.epsilon, "b_eps": b.epsilon, "bits": h.bits,
            "h_e": h.exponent_bits, "b_e": b.exponent_bits}


question(
    id="ch02.bf16_vs_fp16", chapter="ch02", difficulty="easy", tags=("formats", "bf16", "training"),
    question="Why can mixed-precision training run in BF16 without loss scaling, while FP16 needs it?",
    answer=("Both use {bits} bits, split differently. FP16 ({h_e} exponent bits) spans {h_min:.3g} (smallest "
            "normal; subnormals down to {h_sub:.3g}) to {h_max:g}, so small gradients underflow to zero "
            "unless the loss is scaled up first. BF16 keeps FP32's 8 exponent bits: smallest normal "
            "{b_min:.3g}, max {b_max:.4g}, so gradients do not underflow. The price is precision: "
            "epsilon {b_eps:g} for BF16 against {h_eps:g} for FP16."),
    follow_ups=("Which is the better storage format for inference weights that are all within [-1, 1]?",
                "What does loss scaling do to the gradients and why does it need to be dynamic?"),
    compute=_limits)


def _e4m3():
    fn = F.FORMATS["fp8_e4m3"]
    ieee = F.FormatSpec("e4m3_ieee", 4, 3)
    big = np.array([1e6, np.inf], np.float32)
    return {"fn_max": fn.max, "ieee_max": ieee.max, "exp": fn.max_exponent,
            "sat": F.round_to(big, "fp8_e4m3")[0], "sat_inf": F.round_to(big, "fp8_e4m3")[1],
            "e5": F.round_to(big, "fp8_e5m2")[0], "e5_max": F.FORMATS["fp8_e5m2"].max}


question(
    id="ch02.e4m3_max", chapter="ch02", difficulty="medium", tags=("formats", "fp8"),
    question=("What is the largest FP8 E4M3 value, why is it not what IEEE rules would give, and what "
              "does torch do when you cast 1e6 to float8_e4m3fn and to float8_e5m2?"),
    answer=("{fn_max:g}. The 'fn' variant has no infinity, so the all-ones exponent field (2^{exp} after "
            "the bias) holds normal numbers and only mantissa 111 there is NaN: max = 1.110b x 2^{exp} = {fn_max:g}. "
            "With IEEE reservation of the top exponent, E4M3 would stop at {ieee_max:g}. torch's "
            "cast saturates E4M3: 1e6 becomes {sat:g} and even +inf becomes {sat_inf:g}. E5M2 "
            "follows IEEE, so 1e6 (beyond its max {e5_max:g}) becomes {e5}."),
    follow_ups=("Why do FP8 training recipes keep a per-tensor scale next to each FP8 tensor?",
                "Which FP8 format would you use for gradients, and why?"),
    compute=_e4m3)


question(
    id="ch02.fp16_integers", chapter="ch02", difficulty="easy", tags=("formats", "precision"),
    question="FP16's max is 65504. Can it store every integer up to that?",
    answer=("No. With {m} stored mantissa bits plus the implied one it has {sig} significant bits, so "
            "integers are exact only up to 2^{sig}; the first one it cannot store is {h}. Above that the "
            "spacing doubles every power of two, up to {top:g} near the max. BF16 ({b_sig} significant "
            "bits) already fails at {b}, FP8 E4M3 at {e4}."),
    follow_ups=("Why is it a bug to keep token positions or counters in a BF16 tensor?",),
    compute=lambda: {"h": _first_missing_integer("fp16"), "b": _first_missing_integer("bf16"),
                     "e4": _first_missing_integer("fp8_e4m3"), "m": F.FORMATS["fp16"].mantissa_bits,
                     "sig": F.FORMATS["fp16"].mantissa_bits + 1,
                     "b_sig": F.FORMATS["bf16"].mantissa_bits + 1,
                     "top": 2.0 ** (F.FORMATS["fp16"].max_exponent - F.FORMATS["fp16"].mantissa_bits)})


def _ties():
    x = np.array([2049, 2051, 2053], np.float32)
    r = F.round_to(x, "fp16")
    rng = np.random.default_rng(0)
    w = rng.standard_normal(200_000).astype(np.float32)
    trunc = F.decode((w.view(np.uint32) >> 16).astype(np.uint16), "bf16")
    return {"a": r[0], "b": r[1], "c": r[2], "shrink_t": float(np.mean(np.abs(w) - np.abs(trunc))),
            "shrink_r": float(np.mean(np.abs(w) - np.abs(F.round_to(w, "bf16"))))}


question(
    id="ch02.ties_to_even", chapter="ch02", difficulty="medium", tags=("formats", "rounding"),
    question=("What does 'round to nearest, ties to even' do, and why not just truncate the extra bits "
              "when converting FP32 to BF16?"),
    answer=("It picks the nearer representable value; at an exact halfway point it picks the one whose "
            "last mantissa bit is 0. In FP16, 2049 -> {a:g}, 2051 -> {b:g}, 2053 -> {c:g}: ties go "
            "down and up equally often, so there is no drift. Truncation always rounds toward zero: on "
            "N(0,1) values it shrinks magnitudes by {shrink_t:.2e} on average (rounding: {shrink_r:+.1e}), "
            "a systematic bias that accumulates in long sums."),
    follow_ups=("Write the bit trick that rounds an FP32 to BF16 with ties to even.",
                "What is stochastic rounding and when is it preferred?"),
    compute=_ties)
