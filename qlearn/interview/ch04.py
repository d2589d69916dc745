"""Interview questions of chapter 4, *Calibration*."""

import functools

import numpy as np

from qlearn import calibration
from qlearn.interview import Quiz, question


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
         follow_ups=("What goes wrong when the real distribution has heavier tails than Laplace?", "How do you estimate b_L from calibration data?"),
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
         follow_ups=("Why do GPTQ/AWQ papers use 128 sequences of 2048 tokens if a few hundred suffice here?", "Why does the percentile observer need more tokens than min-max to be stable?"),
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
         follow_ups=("Why can KL prefer a tighter clip than MSE?", "Why does TensorRT histogram |x| rather than x?"), compute=_kl_vs_mse)


# --- more questions ------------------------------------------------------------------------

PERCENTILES = (99.0, 99.9, 99.99)


def _static_vs_dynamic():
    from qlearn import uniform

    x = _outlier_data().astype(np.float32)
    n, c = x.shape
    out = {"scale": OUTLIER_SCALE}
    for key, bs in (("tensor", (n, c)), ("token", (1, c)), ("channel", (n, 1))):
        out[key] = calibration.sqnr_db(x, uniform.fake_quantize(x, 8, block_size=bs))
    return out


question(id="ch04.act_granularity", chapter="ch04", difficulty="hard", tags=("calibration", "activations", "gemm"),
         question="Activations with one loud channel: compare one scale per tensor, per token and per channel at "
                  "8 bits. Why do integer kernels still avoid the best of the three?",
         answer="On Laplace data with one channel {scale}x louder: per tensor {tensor:.2f} dB, per token {token:.2f} "
                "dB (better, but each token's max is still set by the loud channel), per channel "
                "{channel:.2f} dB. But an int8 GEMM computes sum_k x_k w_k with integer codes and applies scales "
                "outside the sum: a scale per token (row of X) or per output channel (row of W) factors out, a "
                "scale per input channel k does not. Per-channel activation scales must be moved into the "
                "weights instead, which is what SmoothQuant does.",
         follow_ups=("Write the dequantization of y_ij for per-token x per-output-channel scales.", "Which of the three can a static (calibrated) scheme use?"),
         compute=_static_vs_dynamic, chain="outlier-activations")


def _mse_vs_minmax():
    x = np.random.default_rng(1).laplace(size=200_000)
    out = {}
    for bits in (4, 8):
        for name, r in (("mm", calibration.minmax(x)), ("mse", calibration.mse_optimal(x, bits))):
            out[f"{name}{bits}"] = calibration.sqnr_db(x, calibration.fake_quantize_range(x, r, bits))
        out[f"c{bits}"] = calibration.mse_optimal(x, bits).hi / calibration.minmax(x).hi
    return out


question(id="ch04.mse_observer", chapter="ch04", difficulty="medium", tags=("calibration", "clipping"),
         question="What does an MSE observer do that min-max does not, and how much does it matter at 4 and 8 bits?",
         answer="It tries clip values (fractions of the min-max range) and keeps the one with the least "
                "quantization MSE on the calibration data. On 200k Laplace samples: at 4 bits min-max gives "
                "{mm4:.2f} dB, MSE {mse4:.2f} dB with the range cut to {c4:.2f} of the max; at 8 bits {mm8:.2f} "
                "vs {mse8:.2f} dB (clip {c8:.2f}). Clipping matters most when levels are scarce.",
         follow_ups=("Why can an MSE-optimal activation range still hurt the model's loss?", "How many candidate clips are enough?"),
         compute=_mse_vs_minmax)


def _find_outliers():
    x = _outlier_data()
    found = calibration.outlier_channels(x)
    absmax = np.abs(x).max(axis=0)
    return {"found": ", ".join(str(int(i)) for i in found), "ratio": calibration.OUTLIER_RATIO,
            "rel": float(absmax[7] / np.median(absmax)), "scale": OUTLIER_SCALE}


question(id="ch04.find_outliers", chapter="ch04", difficulty="easy", tags=("calibration", "outliers"),
         question="How do you find outlier channels in a layer's activations?",
         answer="Collect per-channel statistics (absmax, or mean |x|) over calibration tokens and flag channels "
                "whose absmax exceeds a multiple of the median channel's: with the ratio {ratio:g} on our data "
                "(channel 7 scaled {scale}x) the flagged channels are [{found}]; channel 7's absmax is {rel:.1f}x "
                "the median. In real LLMs the same few channels are loud on almost every token and in every "
                "layer's residual stream.",
         follow_ups=("Why are outliers consistent across tokens but not across models?", "What would you do with a flagged channel in a W8A8 deployment?"),
         compute=_find_outliers, chain="outlier-activations", after="ch04.act_granularity")


def _percentile_bits():
    x, W = _tiny_down_inputs()
    out = {}
    for bits in (4, 8):
        rngs = [("mm", calibration.minmax(x))] + [(f"p{i}", calibration.percentile(x, p))
                                                  for i, p in enumerate(PERCENTILES)]
        for key, r in rngs:
            out[f"{key}_{bits}"] = calibration.layer_output_error(x, W, r, bits)["sqnr_db"]
        names = ["min-max"] + [f"the {p:g}th percentile" for p in PERCENTILES]
        scores = [out[f"{k}_{bits}"] for k, _ in rngs]
        out[f"best_{bits}"] = names[int(np.argmax(scores))]
    return out


question(id="ch04.percentile_bits", chapter="ch04", difficulty="hard", tags=("calibration", "clipping", "data"),
         question="Is the best percentile for the activation range the same at 8 bits and at 4 bits?",
         answer="No. On qlearn-tiny's layer-2 down_proj input, judged by the layer's output SQNR: at 8 bits "
                "min-max {mm_8:.2f} dB, 99th percentile {p0_8:.2f}, 99.9th {p1_8:.2f}, 99.99th {p2_8:.2f}; at 4 "
                "bits min-max {mm_4:.2f}, 99th {p0_4:.2f}, 99.9th {p1_4:.2f}, 99.99th {p2_4:.2f}. Best: {best_8} at "
                "8 bits, {best_4} at 4. With few levels rounding error dominates and a tighter clip pays; with "
                "many, each clipped value costs more than the finer step saves. Tune the clip per bit width, "
                "on the layer output.",
         follow_ups=("How would you pick the percentile without sweeping it?", "Why judge the clip on the layer output rather than on the activation?"),
         compute=_percentile_bits)


def _per_tensor_static():
    x, W = _tiny_down_inputs()
    calib, test = x[:1024], x[1024:]
    few = calibration.layer_output_error(test, W, calibration.minmax(calib[:CALIB_SIZES[0]]), 8)
    full = calibration.layer_output_error(test, W, calibration.minmax(calib), 8)
    tok = np.abs(test).max(axis=1)
    return {"few": few["sqnr_db"], "few_clip": 100 * few["clipped"], "full": full["sqnr_db"],
            "full_clip": 100 * full["clipped"], "spread": float(tok.max() / np.median(tok)),
            "n_test": len(test), "n_few": CALIB_SIZES[0], "n_full": len(calib)}


question(id="ch04.static_risk", chapter="ch04", difficulty="medium", tags=("calibration", "static", "dynamic"),
         question="What can go wrong with a static activation range at serving time, and how would you see it?",
         answer="The range is fixed from calibration data; a held-out token louder than any calibration token is "
                "clipped. On qlearn-tiny's layer-2 down_proj at 8 bits, a min-max range from {n_few} "
                "tokens clips {few_clip:.3f} % of the inputs of {n_test} held-out tokens (output SQNR {few:.2f} dB); "
                "from {n_full} tokens it clips {full_clip:.3f} % ({full:.2f} dB). Per-token absmax varies {spread:.1f}x between the median and the loudest token, so one scale "
                "serves very different tokens. Monitor the clipped fraction per layer in production, or use "
                "dynamic per-token scales.",
         follow_ups=("What is the latency cost of dynamic quantization on a GPU?", "How would you choose calibration text for a multilingual model?"),
         compute=_per_tensor_static)
