"""Interview questions of chapter 4, *Calibration*."""

import functools

import numpy as np

from qlearn import calibration
from qlearn.interview import question


OUTLIER_SCALE = 40  # how much larger the outlier channel is
N_CHANNELS = 64
CALIB_SIZES = (16, 128, 1024)


def _outlier_data():
    x = np.random.default_rng(0).laplace(size=(4096, N_CHANNELS))
    x[:, 7] *= OUTLIER_SCALE  # one outlier channel, as in LLM activations
    return x


def _mm_vs_pct():
    x = _outlier_data()
    out = {"scale": OUTLIER_SCALE, "n_ord": N_CHANNELS - 1}
    for name, r in (("mm", calibration.minmax(x)), ("pct", calibration.percentile(x, 99.9))):
        for bits in (8, 4):
            out[f"{name}{bits}"] = calibration.sqnr_db(x, calibration.fake_quantize_range(x, r, bits))
    bulk = np.delete(x, 7, axis=1)
    for bits in (8, 4):
        x_hat = calibration.fake_quantize_range(x, calibration.minmax(x), bits)
        out[f"bulk{bits}"] = calibration.sqnr_db(bulk, np.delete(x_hat, 7, axis=1))
    return out


question(id="ch04.minmax_outlier", chapter="ch04", difficulty="medium", tags=("calibration", "outliers"),
         question="Activations have one channel tens of times larger than the rest. Why does a min-max range hurt, "
                  "and what does a percentile clip change?",
         answer="With one channel {scale}x larger (Laplace data), the min-max step is set by the outlier, so the {n_ord} ordinary channels get only a few levels: their "
                "own SQNR is {bulk8:.2f} dB at 8 bits and {bulk4:.2f} dB at 4 bits. Over the whole tensor min-max "
                "gives {mm8:.2f} / {mm4:.2f} dB (8 / 4 bits); the 99.9th-percentile clip gives {pct8:.2f} / "
                "{pct4:.2f} dB. The whole-tensor SQNR is dominated by the outlier's energy, which is why the "
                "layer-output error, not activation SQNR, should decide.",
         follow_ups=("Why does per-channel activation quantization not solve this in a real GEMM?",
                     "How do SmoothQuant and LLM.int8() handle the outlier channel instead?"),
         compute=_mm_vs_pct)


question(id="ch04.aciq", chapter="ch04", difficulty="hard", tags=("calibration", "theory"),
         question="For Laplace-distributed activations, what clip minimises the mean squared error of a "
                  "symmetric b-bit quantizer, and why does it depend on b?",
         answer="With mean |x| = b_L, the optimum is {f2:.2f} b_L at 2 bits, {f4:.2f} b_L at 4 bits and {f8:.2f} b_L "
                "at 8 bits (minimising clipping error 2 b_L^2 exp(-a/b_L) plus rounding error a^2/(3 4^b)). "
                "More bits make rounding cheap, so the clip moves out to cut the clipping term.",
         follow_ups=("What goes wrong when the real distribution has heavier tails than Laplace?",),
         compute=lambda: {f"f{b}": calibration.laplace_clip_factor(b) for b in (2, 4, 8)})


@functools.lru_cache(maxsize=1)
def _tiny_down_inputs():
    import torch

    from qlearn import adapters, models
    model, tok = models.load("tiny")
    ids = tok.encode(models.validation_text())[:2048]
    name = "layers.2.mlp.down_proj"
    x = adapters.capture_inputs(model, torch.tensor(ids).reshape(16, 128), [name])[name].numpy()
    return x, model.get_submodule(name).weight.detach().numpy()


def _calib_size():
    x, W = _tiny_down_inputs()
    calib, test = x[:1024], x[1024:]
    res = calibration.error_vs_calibration_size(calib, test, list(CALIB_SIZES), method="percentile", bits=8, W=W)
    r_mm = calibration.error_vs_calibration_size(calib, test, [CALIB_SIZES[0], CALIB_SIZES[-1]], method="minmax",
                                                 bits=8, W=W)
    return {"n0": CALIB_SIZES[0], "n1": CALIB_SIZES[1], "n2": CALIB_SIZES[2], "n_test": len(test),
            "p16": res["sqnr_db"][0], "p128": res["sqnr_db"][1], "p1024": res["sqnr_db"][2],
            "m16": r_mm["sqnr_db"][0], "m1024": r_mm["sqnr_db"][1]}


question(id="ch04.calib_tokens", chapter="ch04", difficulty="medium", tags=("calibration", "data"),
         question="How many calibration tokens do you need to set an 8-bit activation range?",
         answer="Measure it: on qlearn-tiny's layer-2 down_proj input (99.99th percentile observer, judged by the "
                "layer output SQNR on {n_test} held-out tokens) {n0} tokens give {p16:.2f} dB, {n1} give {p128:.2f} dB "
                "and {n2} give {p1024:.2f} dB; min-max goes from {m16:.2f} to {m1024:.2f} dB. Too few tokens miss "
                "the rare large values, so the range is too tight and held-out tokens clip.",
         follow_ups=("Why do GPTQ/AWQ papers use 128 sequences of 2048 tokens if a few hundred suffice here?",),
         compute=_calib_size)


def _kl_vs_mse():
    x, _ = _tiny_down_inputs()
    return {"kl": calibration.kl_entropy(x, 8).hi, "mse": calibration.mse_optimal(x, 8).hi,
            "mm": calibration.minmax(x).hi, "pct": calibration.percentile(x, 99.99).hi}


question(id="ch04.kl_entropy", chapter="ch04", difficulty="hard", tags=("calibration", "tensorrt"),
         question="What does TensorRT's entropy (KL) calibration optimise, and how does its range compare "
                  "with MSE and min-max on a real activation?",
         answer="It histograms |x|, and for each candidate threshold compares the clipped histogram P with its "
                "8-bit quantized version Q by KL(P||Q), keeping the threshold with the least information loss. On "
                "qlearn-tiny's layer-2 down_proj input it picks ±{kl:.3g}, MSE picks ±{mse:.3g}, the 99.99th "
                "percentile ±{pct:.3g}, min-max ±{mm:.3g}.",
         follow_ups=("Why can KL prefer a tighter clip than MSE?",), compute=_kl_vs_mse)
