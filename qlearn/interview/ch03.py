"""Interview questions of chapter 3, *Uniform quantization and SQNR*."""

from qlearn import uniform
from qlearn.interview import question


def _rule():
    return {"rule4": uniform.rule_of_thumb_sqnr_db(4), "uni4": uniform.theoretical_sqnr_db(4, "uniform",
                                                                                            symmetric=False),
            "sine4": uniform.theoretical_sqnr_db(4, "sine", symmetric=False),
            "g4": uniform.optimal_clip(4, "gaussian")[1], "t4": uniform.optimal_clip(4, "student_t")[1]}


question(id="ch03.rule_of_thumb", chapter="ch03", difficulty="medium", tags=("sqnr", "theory"),
         question="Where does 6.02n + 1.76 dB come from, and does it hold for LLM weights?",
         answer="Each bit halves the step: 20 log10(2) = 6.02 dB of less noise power (Delta^2/12). The "
                "1.76 dB = 10 log10(3/2) is for a full-scale sine wave. At 4 bits the rule says {rule4:.2f} dB; "
                "our grid gives {sine4:.2f} dB on a sine, {uni4:.2f} dB on uniform data, and with the best "
                "clipping only {g4:.2f} dB on Gaussian and {t4:.2f} dB on Student-t (df 5) data.",
         follow_ups=("Why is the slope still about 6 dB per bit?",), compute=_rule)


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
         follow_ups=("How would you pick the clip for a real weight matrix with no known distribution?",),
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
         follow_ups=("Why must 0 be exactly representable?",), compute=_sym)


def _tie():
    import numpy as np

    return {"ties": np.rint([0.5, 1.5, 2.5]).tolist()}


question(id="ch03.rounding", chapter="ch03", difficulty="easy", tags=("rounding",),
         question="Which rounding do PyTorch and numpy use when quantizing, and why does it matter?",
         answer="Round half to even: rint(0.5, 1.5, 2.5) = {ties}. Ties go to the even neighbour, so over "
                "many ties the error averages to zero instead of biasing upwards; matching it is needed to "
                "reproduce codes bit for bit.",
         compute=_tie)
