"""Interview questions for chapter 2, number formats. Every number comes from qlearn.formats."""

import numpy as np

from qlearn import formats as F
from qlearn.interview import Quiz, question


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
    quiz=Quiz(prompt="Largest finite value of FP8 E4M3 (the fn variant)?", value="fn_max", rel_tol=0.001),
    compute=_e4m3)


question(
    id="ch02.fp16_integers", chapter="ch02", difficulty="easy", tags=("formats", "precision"),
    question="FP16's max is 65504. Can it store every integer up to that?",
    answer=("No. With {m} stored mantissa bits plus the implied one it has {sig} significant bits, so "
            "integers are exact only up to 2^{sig}; the first one it cannot store is {h}. Above that the "
            "spacing doubles every power of two, up to {top:g} near the max. BF16 ({b_sig} significant "
            "bits) already fails at {b}, FP8 E4M3 at {e4}."),
    follow_ups=("Why is it a bug to keep token positions or counters in a BF16 tensor?", "What is the spacing of FP16 numbers between 1024 and 2048?"),
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


# --- more questions ------------------------------------------------------------------------

LOUD_ACTIVATION = 70_000.0  # an activation beyond fp16's range (seen in large models' residual streams)
TINY_GRAD = 1e-8  # a gradient below fp16's smallest subnormal
SUM_TERMS = 1000  # how many ones to add in the accumulation experiment
N_SAMPLES = 200_000


def _overflow():
    x = np.array([LOUD_ACTIVATION], np.float32)
    return {"x": LOUD_ACTIVATION, "h": F.round_to(x, "fp16")[0], "b": F.round_to(x, "bf16")[0],
            "h_max": F.FORMATS["fp16"].max}


question(
    id="ch02.fp16_overflow", chapter="ch02", difficulty="medium", tags=("formats", "fp16", "outliers"),
    question="A model trained in BF16 produces NaNs when you run it in FP16. What is the likely cause?",
    answer=("Overflow. Some activations (residual streams, attention logits of large models) exceed FP16's "
            "max of {h_max:g}. An activation of {x:g} becomes {h} in FP16 and inf - inf or inf x 0 later "
            "gives NaN; BF16 stores it as {b:g}, because it has FP32's exponent range. Fixes: run in BF16, "
            "or keep the overflowing ops (residual adds, softmax inputs) in FP32."),
    follow_ups=("Why do BF16-trained models usually survive INT8 weight quantization anyway?", "How would you find which layer overflows first?"),
    compute=_overflow)


def _fp8_grid():
    out = {}
    for key, name in (("e4", "fp8_e4m3"), ("e5", "fp8_e5m2")):
        vals = F.decode(np.arange(256, dtype=np.uint8), name)
        finite = vals[np.isfinite(vals)]
        out[key + "_n"] = int(np.unique(finite).size)
        out[key + "_eps"] = F.FORMATS[name].epsilon
        out[key + "_max"] = F.FORMATS[name].max
        out[key + "_sub"] = F.FORMATS[name].min_subnormal
    out["dr4"] = np.log2(out["e4_max"] / out["e4_sub"])
    out["dr5"] = np.log2(out["e5_max"] / out["e5_sub"])
    return out


question(
    id="ch02.fp8_pair", chapter="ch02", difficulty="medium", tags=("formats", "fp8", "training"),
    question="Why are there two FP8 formats, and which goes where in FP8 training?",
    answer=("E4M3 trades range for precision: {e4_n} distinct finite values, relative step {e4_eps:g}, range "
            "{e4_sub:g} to {e4_max:g} ({dr4:.0f} binades). E5M2 has {e5_n} values, step {e5_eps:g}, range "
            "{e5_sub:g} to {e5_max:g} ({dr5:.0f} binades). Recipes use E4M3 for weights and activations "
            "(forward) and E5M2 for gradients, whose range across a tensor is wider; each tensor also "
            "carries a scale so its values land inside the format's range."),
    follow_ups=("How is the per-tensor scale chosen (delayed scaling vs current scaling)?", "What do MX formats (one shared exponent per 32 values) change?"),
    compute=_fp8_grid)


def _fp8_vs_int8():
    rng = np.random.default_rng(2)
    out = {}
    for key, x in (("g", rng.standard_normal(N_SAMPLES)),
                   ("t", rng.standard_t(3, N_SAMPLES))):
        x = x.astype(np.float32)
        amax = np.abs(x).max()
        fp8 = F.round_to(x * (F.FORMATS["fp8_e4m3"].max / amax), "fp8_e4m3") * (amax / F.FORMATS["fp8_e4m3"].max)
        int8 = np.rint(x * (127 / amax)) * (amax / 127)
        for name, xh in (("fp8", fp8), ("int8", int8)):
            out[f"{key}_{name}"] = float(10 * np.log10(np.sum(x.astype(np.float64) ** 2)
                                                        / np.sum((x - xh).astype(np.float64) ** 2)))
    return out


question(
    id="ch02.fp8_vs_int8", chapter="ch02", difficulty="hard", tags=("formats", "fp8", "int8", "sqnr"),
    question="With one absmax scale per tensor, which keeps more signal: FP8 E4M3 or INT8? Does the answer "
             "depend on the data?",
    answer=("It depends on the tails. On Gaussian data INT8 wins: {g_int8:.1f} dB against {g_fp8:.1f} dB for "
            "E4M3, because the uniform grid's 255 levels are finer than E4M3's 3 mantissa bits over the "
            "range where most values sit. On heavy-tailed Student-t (3 degrees of freedom) data the absmax "
            "is far out, INT8's step becomes coarse for the bulk and drops to {t_int8:.1f} dB, while E4M3's "
            "relative precision holds: {t_fp8:.1f} dB. Floating point spends its codes on dynamic range, "
            "integers on uniform resolution."),
    follow_ups=("How would finer-grained scales (per channel, per block of 32 as in MX formats) change this?",
                "Why do FP8 matmuls still accumulate in higher precision?"),
    compute=_fp8_vs_int8)


def _subnormal():
    g = np.array([TINY_GRAD], np.float32)
    return {"g": TINY_GRAD, "h": F.round_to(g, "fp16")[0], "b": F.round_to(g, "bf16")[0],
            "h_sub": F.FORMATS["fp16"].min_subnormal, "h_min": F.FORMATS["fp16"].min_normal,
            "b_min": F.FORMATS["bf16"].min_normal}


question(
    id="ch02.subnormals", chapter="ch02", difficulty="hard", tags=("formats", "fp16", "training"),
    question="What are subnormal numbers, and what happens to a gradient of 1e-8 in FP16 and in BF16?",
    answer=("Below the smallest normal number (FP16: {h_min:.3g}) the exponent field is 0 and the implied "
            "leading 1 becomes 0, so values step down evenly to {h_sub:.3g} with fewer significant bits: a "
            "gradual underflow instead of a jump to zero. A gradient of {g:g} is below even that, so FP16 "
            "rounds it to {h:g}: the update is lost, which is what loss scaling prevents. BF16 stores it as "
            "{b:.4g} (its smallest normal is {b_min:.3g})."),
    follow_ups=("Why are subnormals slow on some hardware, and what do flush-to-zero modes do?", "Does BF16 need loss scaling for tiny gradients, and why not?"),
    compute=_subnormal)


def _accumulate():
    out = {}
    for fmt in ("bf16", "fp16"):
        acc = np.zeros(1, np.float32)
        one = np.ones(1, np.float32)
        for _ in range(SUM_TERMS):
            acc = F.round_to(acc + one, fmt)
        out[fmt] = float(acc[0])
    out["n"] = SUM_TERMS
    out["b_sig"] = F.FORMATS["bf16"].mantissa_bits + 1
    return out


question(
    id="ch02.accumulate", chapter="ch02", difficulty="hard", tags=("formats", "bf16", "accumulation"),
    question="Add 1.0 a thousand times, rounding the running sum to BF16 after each step. What do you get, "
             "and what does it teach about matmul kernels?",
    answer=("{bf16:g}, not {n}: BF16 has {b_sig} significant bits, so once the sum reaches 2^{b_sig} = 256 the "
            "spacing of representable numbers is 2 and adding 1 is a tie that rounds back to even. The same "
            "loop in FP16 ends at {fp16:g}. Kernels therefore multiply in low precision but accumulate in "
            "FP32 (tensor cores, ggml's float sums) or INT32 for integer codes."),
    follow_ups=("How does Kahan summation fix this without a wider accumulator?", "What accumulator width do int8 GEMMs use, and why is it enough?"),
    compute=_accumulate,
    quiz=Quiz(prompt="Sum of 1000 ones with a BF16 running sum?", value="bf16", rel_tol=0.001))


question(
    id="ch02.int8_range", chapter="ch02", difficulty="easy", tags=("formats", "int8", "symmetric"),
    question="Signed INT8 holds -128..127. Why do symmetric quantizers usually use only -127..127?",
    answer=("The range of a signed {bits}-bit integer is {lo}..{hi}: one more negative value. A symmetric "
            "scale maps +absmax to {hi}; using -128 too would give negative values one extra level and make "
            "x and -x quantize differently. The restricted range -{hi}..{hi} keeps the grid symmetric and "
            "costs one of {n} codes."),
    follow_ups=("When does an asymmetric quantizer use all 256 codes?", "What happens to -128 when you negate it in int8?"),
    compute=lambda: {"bits": 8, "lo": F.int_range(8)[0], "hi": F.int_range(8)[1],
                     "n": F.int_range(8)[1] - F.int_range(8)[0] + 1})
