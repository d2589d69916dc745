"""Interview questions of chapter 3, *Uniform quantization and SQNR*."""

from functools import lru_cache

import numpy as np

from qlearn import uniform
from qlearn.interview import Quiz, question


CHAPTER_SAMPLES = 1_000_000  # the chapter's SQNR table: 1M samples of each distribution, seed 7
CHAPTER_SEED = 7


@lru_cache(maxsize=1)
def _samples():
    return {d: uniform.sample_distribution(d, CHAPTER_SAMPLES, seed=CHAPTER_SEED)
            for d in ("sine", "uniform", "gaussian", "student_t")}


def _rule():
    out = {"rule4": uniform.rule_of_thumb_sqnr_db(4)}
    for d, x in _samples().items():
        out[d] = uniform.sqnr_db(x, uniform.fake_quantize(x, 4))
    out["g_opt"] = uniform.optimal_clip(4, "gaussian")[1]
    out["t_opt"] = uniform.optimal_clip(4, "student_t")[1]
    return out


question(id="ch03.rule_of_thumb", chapter="ch03", difficulty="medium", tags=("sqnr", "theory"),
         question="Where does 6.02n + 1.76 dB come from, and does it hold for LLM weights?",
         answer="Each bit halves the step: 20 log10(2) = 6.02 dB less noise power (Delta^2/12). The 1.76 dB "
                "= 10 log10(3/2) is the ratio of a full-scale sine's power to that of uniform noise over the "
                "same range. At 4 bits the rule says {rule4:.2f} dB. The chapter's symmetric min/max grid, "
                "per tensor, on a million samples each: sine {sine:.2f} dB, uniform {uniform:.2f} dB, "
                "Gaussian {gaussian:.2f} dB, Student-t (df 5) {student_t:.2f} dB. Bell-shaped data have a "
                "max far above their standard deviation, so most levels are wasted; even the best clip only "
                "reaches {g_opt:.2f} dB (Gaussian) and {t_opt:.2f} dB (Student-t) in theory.",
         follow_ups=("Why is the slope still about 6 dB per bit?",
                     "Which single number would you quote for 4-bit LLM weights instead?"),
         compute=_rule, chain="sqnr-theory")


def _clip():
    c4, s4 = uniform.optimal_clip(4, "gaussian")
    c8, s8 = uniform.optimal_clip(8, "gaussian")
    g, o = uniform.theoretical_distortion(4, "gaussian", c4)
    return {"c4": c4, "s4": s4, "c8": c8, "s8": s8, "g": g, "o": o}


question(id="ch03.clipping", chapter="ch03", difficulty="hard", tags=("clipping", "sqnr"),
         question="What is the optimal clipping range of a 4-bit symmetric quantizer for Gaussian data, "
                  "and why does it grow with the bit width?",
         answer="About {c4:.2f} standard deviations ({s4:.2f} dB); at 8 bits it is {c8:.2f} sd ({s8:.2f} dB). "
                "Clipping trades overload error (values beyond the range, here {o:.5f}) against granular "
                "error (half-step rounding, {g:.5f}). More bits shrink the granular error, so the optimum "
                "moves out to cut the overload term.",
         follow_ups=("How would you pick the clip for a real weight matrix with no known distribution?", "Why does clipping help more for heavy-tailed data?"),
         compute=_clip)


def _sym():
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal(100_000), 0).astype(np.float32)
    s = uniform.sqnr_db(x, uniform.fake_quantize(x, 4, True))
    a = uniform.sqnr_db(x, uniform.fake_quantize(x, 4, False))
    return {"sym": s, "asym": a, "gain": a - s}


question(id="ch03.sym_vs_asym", chapter="ch03", difficulty="easy", tags=("symmetric", "zero-point"),
         question="When does an asymmetric (zero-point) grid beat a symmetric one?",
         answer="When the data are one-sided or skewed, such as post-ReLU activations: on ReLU'd Gaussian "
                "data at 4 bits symmetric gives {sym:.2f} dB and asymmetric {asym:.2f} dB, {gain:.2f} dB "
                "better, since the symmetric grid spends half its codes on values that never occur. For "
                "roughly symmetric weights the two are close and symmetric is cheaper (no zero point, "
                "simpler integer matmul).",
         follow_ups=("Why must 0 be exactly representable?", "What extra work does a zero point add to an integer matmul?"), quiz=Quiz(prompt="Post-ReLU activations at 4 bits: which grid wastes about half its codes?", kind="choice", options=("symmetric", "asymmetric"), correct=0),
    compute=_sym)


def _tie():
    import numpy as np

    return {"ties": np.rint([0.5, 1.5, 2.5]).tolist()}


question(id="ch03.rounding", chapter="ch03", difficulty="easy", tags=("rounding",),
         question="Which rounding do PyTorch and numpy use when quantizing, and why does it matter?",
         answer="Round half to even: rint(0.5, 1.5, 2.5) = {ties}. Ties go to the even neighbour, so over "
                "many ties the error averages to zero instead of biasing upwards; matching it is needed to "
                "reproduce codes bit for bit.",
         follow_ups=("Which rounding does ggml's roundf use, and where does that matter?",
                     "Why is stochastic rounding used in low-precision training but not in PTQ?"),
         compute=_tie)


# --- more questions ------------------------------------------------------------------------

SCALE_BITS = 16  # an fp16 scale per block


@lru_cache(maxsize=1)
def _chapter_weight():
    """The chapter's weight matrix: Student-t rows with log-normal row scales and 4 loud columns."""
    rng = np.random.default_rng(3)
    rows, cols = 512, 1024
    W = uniform.sample_distribution("student_t", rows * cols, seed=3).reshape(rows, cols)
    W *= np.exp(0.4 * rng.standard_normal((rows, 1))).astype(np.float32)
    W[:, rng.choice(cols, 4, replace=False)] *= 10.0
    return (0.02 * W).astype(np.float32)


def _granularity():
    W = _chapter_weight()
    out = {}
    for key, bs in (("t", uniform.block_size_for(W.shape, "per_tensor")),
                    ("c", uniform.block_size_for(W.shape, "per_channel")),
                    ("g128", uniform.block_size_for(W.shape, "per_group", 128)),
                    ("g32", uniform.block_size_for(W.shape, "per_group", 32)),
                    ("b32", (32, 32))):
        q = uniform.quantize(W, 4, block_size=bs)
        out[key] = uniform.sqnr_db(W, uniform.dequantize(q))
        out[key + "_bpw"] = 4 + SCALE_BITS * q.scale.size / W.size
    return out


question(id="ch03.granularity", chapter="ch03", difficulty="medium", tags=("granularity", "sqnr", "storage"),
         question="Per tensor, per channel, per group, per 2-D block: what does each granularity buy on a "
                  "weight matrix with a few loud input columns, and what does it cost?",
         answer="On the chapter's 512 x 1024 Student-t matrix (log-normal row scales, 4 columns x10), 4-bit "
                "symmetric: per tensor {t:.2f} dB ({t_bpw:.4f} bpw), per output channel {c:.2f} dB "
                "({c_bpw:.4f} bpw), groups of 128 {g128:.2f} dB ({g128_bpw:.4f}), groups of 32 {g32:.2f} dB "
                "({g32_bpw:.4f}), 32 x 32 blocks {b32:.2f} dB ({b32_bpw:.4f}). Row scales fix the uneven "
                "rows; small groups along the input dimension also confine each loud column to its groups. "
                "The price is one fp16 scale per block: half a bit per weight at 32.",
         follow_ups=("Why do 32 x 32 tiles (1024 weights per scale) do worse than groups of 128?",
                     "Which granularity can an integer GEMM use for activations?"),
         compute=_granularity,
         quiz=Quiz(prompt="Bits per weight of 4-bit codes with one fp16 scale per group of 32?",
                   value="g32_bpw", rel_tol=0.001))


def _per_bit():
    opt = {b: uniform.optimal_clip(b, "gaussian")[1] for b in (3, 4, 6, 8)}
    return {"b34": opt[4] - opt[3], "b46": (opt[6] - opt[4]) / 2, "b68": (opt[8] - opt[6]) / 2,
            "rule": uniform.rule_of_thumb_sqnr_db(1) - uniform.rule_of_thumb_sqnr_db(0),
            "gap4": uniform.rule_of_thumb_sqnr_db(4) - opt[4], "gap8": uniform.rule_of_thumb_sqnr_db(8) - opt[8]}


question(id="ch03.per_bit", chapter="ch03", difficulty="medium", tags=("sqnr", "clipping", "theory"),
         question="With the best clip for each bit width, how many dB does one more bit buy on Gaussian data?",
         answer="Less than the rule's {rule:.2f}: {b34:.2f} dB from 3 to 4 bits, {b46:.2f} dB per bit from 4 to 6, "
                "{b68:.2f} from 6 to 8. The optimal clip widens with each bit (overload error must fall too), so "
                "part of each bit goes to range. The gap to 6.02n + 1.76 grows from {gap4:.2f} dB at 4 bits to "
                "{gap8:.2f} dB at 8.",
         follow_ups=("Would a non-uniform grid (NF4, Lloyd-Max) recover the missing dB?", "Where does the rest of each bit go?"),
         compute=_per_bit, chain="sqnr-theory", after="ch03.rule_of_thumb")


def _sqnr_meaning():
    s = uniform.optimal_clip(4, "gaussian")[1]
    return {"s": s, "rel": 100 * 10 ** (-s / 10), "rms": 100 * 10 ** (-s / 20)}


question(id="ch03.sqnr_meaning", chapter="ch03", difficulty="easy", tags=("sqnr", "metrics"),
         question="An SQNR of about 20 dB: what error is that, in plain numbers?",
         answer="SQNR = 10 log10(signal power / noise power). The best 4-bit symmetric grid on Gaussian data "
                "reaches {s:.2f} dB: the error's power is {rel:.2f} % of the signal's, its RMS {rms:.1f} % of the "
                "signal's RMS. Every 10 dB divides the error power by 10; every 6.02 dB halves the RMS error.",
         follow_ups=("Why is the weight SQNR a poor predictor of model quality on its own?", "How would you convert a relative output error of 1e-3 to dB?"),
         compute=_sqnr_meaning)


def _restricted():
    u = _samples()["uniform"]
    return {"sym": uniform.sqnr_db(u, uniform.fake_quantize(u, 4)),
            "asym": uniform.sqnr_db(u, uniform.fake_quantize(u, 4, False)),
            "pred": 20 * np.log10(2 ** 4 - 2), "ideal": 20 * np.log10(2) * 4,
            "lo": uniform.code_range(4, True)[0], "hi": uniform.code_range(4, True)[1]}


question(id="ch03.restricted_range", chapter="ch03", difficulty="hard", tags=("sqnr", "symmetric", "theory"),
         question="On uniform data, what SQNR does a 4-bit symmetric quantizer reach, and why not 6.02 x 4?",
         answer="It uses codes {lo}..{hi}: 2^4 - 1 levels spanning the range in 2^4 - 2 steps, so the step is "
                "2 max / (2^n - 2) and SQNR = 20 log10(2^n - 2) = {pred:.2f} dB; measured {sym:.2f} dB on the "
                "chapter's million samples. 6.02n = {ideal:.2f} dB needs a midrise grid of 2^n levels at the "
                "centres of 2^n equal cells, with no level at 0. Our asymmetric grid reaches {asym:.2f} dB: "
                "its integer zero point puts 0 on the grid, shifting the levels off the cell centres.",
         follow_ups=("Why do we accept losing that dB to keep 0 exact?", "What would a midrise 4-bit grid look like, and why do kernels avoid it?"),
         compute=_restricted, chain="sqnr-theory", after="ch03.per_bit")


def _zero():
    lo, hi, bits = -0.37, 1.2, 4
    qmax = 2 ** bits - 1
    scale = (hi - lo) / qmax
    z_float = -lo / scale
    z_int = round(z_float)
    back_float = (0 - 0 + round(0 / scale + z_float) - z_float) * scale
    return {"lo": lo, "hi": hi, "scale": scale, "zf": z_float, "zi": z_int,
            "err": abs(back_float), "step_pct": 100 * abs(back_float) / scale}


question(id="ch03.zero_exact", chapter="ch03", difficulty="medium", tags=("zero-point", "asymmetric"),
         question="Why is the zero point of an asymmetric quantizer rounded to an integer?",
         answer="So that 0.0 is exactly representable. For a range [{lo}, {hi}] at 4 bits the scale is "
                "{scale:.4f} and the exact zero point {zf:.3f}. Rounded to {zi}, code {zi} decodes to exactly 0. "
                "Kept fractional, a 0 comes back as {err:.4f} ({step_pct:.0f} % of a step). Zeros are everywhere: "
                "padding, masked positions, ReLU outputs, pruned weights; an error on each of them is a bias "
                "that adds up over a long dot product.",
         follow_ups=("What does the rounded zero point cost at the ends of the range?", "Is 0 exactly representable on a symmetric grid?"),
         compute=_zero)
