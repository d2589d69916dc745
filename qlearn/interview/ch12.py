"""Interview questions of chapter 12, quantizing the KV cache. Every number is computed by qlearn."""
from __future__ import annotations

import numpy as np
import torch

from qlearn import kquants as K
from qlearn import kvcache as kc
from qlearn import memory as M
from qlearn.interview import question

GIB = 2 ** 30


def _cfg(name):
    m = M.MODELS[name]
    return m.layers, m.kv_heads, m.hidden // m.heads


def _bpt(name, k="f16", v="f16", **o):
    return kc.bytes_per_token(k, v, *_cfg(name), **o)


def _kv70():
    f16 = _bpt("Llama-3-70B")
    return {"f16_kib": f16 / 1024, "gib_128k": f16 * 131072 / GIB,
            "q4_gib": _bpt("Llama-3-70B", "q4_0", "q4_0") * 131072 / GIB}


question(
    id="ch12.kv_bytes_70b", chapter="ch12", difficulty="easy", tags=("kv-cache", "memory"),
    question="How many bytes does Llama-3-70B's KV cache take per token, and at a 128K context?",
    answer=("2 (K and V) x 80 layers x 8 KV heads x 128 channels x 2 bytes = {f16_kib:.0f} KiB per "
            "token in fp16, {gib_128k:.1f} GiB for 131072 tokens of one sequence. With llama.cpp's "
            "q4_0 cache (18 bytes per 32 values) it is {q4_gib:.1f} GiB."),
    follow_ups=("How does grouped-query attention enter the formula?",
                "Why does batch size multiply this but not the weights?"),
    compute=_kv70,
)


def _q80():
    t = K.QTYPES["Q8_0"]
    return {"bytes": t.type_size, "bpw": t.bits_per_weight,
            "ratio": 16 / t.bits_per_weight}


question(
    id="ch12.q8_0_cache", chapter="ch12", difficulty="easy", tags=("kv-cache", "llama.cpp"),
    question="What does `-ctk q8_0` store per 32 key values, and how much smaller is it than f16?",
    answer=("One block of {bytes} bytes: an fp16 scale and 32 int8 codes, {bpw:.2f} bits per value, "
            "{ratio:.2f}x smaller than f16. The blocks run along the head dimension of each token, "
            "so a new token is quantized on its own when it is written."),
    compute=_q80,
)


def _kivi_axes():
    rng = np.random.default_rng(12)
    k = rng.standard_normal((1, 1, 128, 64)).astype(np.float32)
    k[..., 7] = 20 + k[..., 7]                       # one outlier channel, large in every token
    x = torch.from_numpy(k)
    rest = torch.arange(64) != 7
    err = {}
    for axis, group in (("token", 64), ("channel", 32)):
        f = kc.cache_format("int4", 64, axis, group, symmetric=False, rotate=False)
        back = kc.decode(kc.encode(x, f), f, 64)
        e, r = (back - x)[..., rest], x[..., rest]
        err[axis] = float((e ** 2).mean() / (r ** 2).mean())
    return {"tok": err["token"], "chan": err["channel"], "ratio": err["token"] / err["channel"]}


question(
    id="ch12.kivi_axes", chapter="ch12", difficulty="medium", tags=("kv-cache", "kivi"),
    question="Why does KIVI quantize keys per channel but values per token?",
    answer=("Keys have a few channels with large magnitude in every token (outlier channels); "
            "a per-token scale is set by those channels and crushes the rest. Per-channel scales "
            "give each channel its own range. On synthetic keys whose channel 7 sits near 20 in "
            "every token, 4-bit per-token quantization leaves a relative error of {tok:.3f} on the "
            "other 63 channels, per-channel (groups of 32 tokens) {chan:.4f}, {ratio:.0f}x lower. Values have no such channels, and the "
            "attention output mixes values per token, so per-token error is what matters for V."),
    follow_ups=("Why does per-channel grouping force a full-precision residual window?",),
    compute=_kivi_axes,
)


def _residual():
    return {"r": 128, "g": 32, "L": 1000, "kq": (1000 - 128) // 32 * 32, "vq": 1000 - 128}


question(
    id="ch12.residual", chapter="ch12", difficulty="medium", tags=("kv-cache", "kivi"),
    question="In KIVI with residual R and group G, how many of L cached tokens are quantized?",
    answer=("Keys: whole groups of G tokens that lie before the last R tokens, "
            "(L - R) // G * G; values: every token before the window, L - R. With R={r}, G={g}, "
            "L={L}: {kq} key tokens and {vq} value tokens are quantized, the rest are fp16. A "
            "per-channel scale needs G tokens to exist before it can be computed, so new keys wait "
            "in full precision."),
    compute=_residual,
)


def _hadamard():
    h = kc.hadamard(64).numpy()
    x = np.zeros(64, np.float32)
    x[3] = 1.0
    y = x @ h
    return {"n": 64, "entry": float(abs(h[0, 0])), "peak_before": 1.0,
            "peak_after": float(np.abs(y).max()), "orth": float(np.abs(h @ h - np.eye(64)).max())}


question(
    id="ch12.hadamard", chapter="ch12", difficulty="medium", tags=("kv-cache", "rotation", "quarot"),
    question="llama.cpp multiplies Q and K by a Hadamard matrix before a quantized cache. Why is "
             "that free, and why does it help?",
    answer=("H is orthonormal and symmetric (H H = I, max error {orth:.1e} in float32), so "
            "(qH)(kH)^T = q k^T: attention scores do not change. Every entry of the normalized "
            "{n}x{n} H is +-{entry:.3f}, so a single outlier channel of size 1 becomes {n} entries "
            "of size {peak_after:.3f}: the block's absmax, hence its scale, drops and the other "
            "channels keep more resolution. QuaRot and SpinQuant rotate weights and activations "
            "with the same idea."),
    compute=_hadamard,
)


def _v_rot():
    return {"v_rot": kc.cache_format("q4_0", 128, rot=kc.ROT_MIN).rot,
            "k_rot": kc.cache_format("q4_0", 128).rot}


question(
    id="ch12.v_rotation", chapter="ch12", difficulty="hard", tags=("kv-cache", "rotation"),
    question="If V is rotated before the cache, what must happen after attention, and which "
             "blocks does llama.cpp use for a head of 128?",
    answer=("softmax(s) (V H) = (softmax(s) V) H, so the attention output is multiplied by H "
            "once more (H is its own inverse) before o_proj. For a head of 128 llama.cpp rotates "
            "K with one {k_rot}x{k_rot} matrix and V with {v_rot}x{v_rot} blocks."),
    compute=_v_rot,
)


def _ratio():
    return {"f16": _bpt("Llama-3-8B"), "q4": _bpt("Llama-3-8B", "q4_0", "q4_0"),
            "kivi": _bpt("Llama-3-8B", "int2", "int2", k_axis="channel", v_axis="token",
                         group=32, symmetric=False),
            "x_q4": _bpt("Llama-3-8B") / _bpt("Llama-3-8B", "q4_0", "q4_0")}


question(
    id="ch12.bytes_per_token", chapter="ch12", difficulty="easy", tags=("kv-cache", "memory"),
    question="Llama-3-8B: cache bytes per token in f16, q4_0, and 2-bit KIVI?",
    answer=("f16 {f16:.0f} B, q4_0 {q4:.0f} B ({x_q4:.2f}x smaller: the fp16 scale per 32 values "
            "costs half a bit), 2-bit KIVI with groups of 32 and fp16 scale plus uint8 zero point "
            "{kivi:.0f} B, before counting its full-precision residual window."),
    compute=_ratio,
)


def _fit():
    f16, q4 = _bpt("Llama-3-8B"), _bpt("Llama-3-8B", "q4_0", "q4_0")
    free = 16 * GIB
    return {"free": 16, "ctx_f16": int(free // f16), "ctx_q4": int(free // q4)}


question(
    id="ch12.context_fits", chapter="ch12", difficulty="medium", tags=("kv-cache", "memory"),
    question="With 16 GiB left for the cache, how many tokens of Llama-3-8B context fit with f16 and "
             "with q4_0?",
    answer="{ctx_f16} tokens with f16, {ctx_q4} with q4_0 (batch 1).",
    compute=_fit,
)


def _decode_cost():
    L = 512
    return {"L": L, "n": 128, "full": sum(L + i for i in range(128)) / 128, "cached": 1}


question(
    id="ch12.why_cache", chapter="ch12", difficulty="easy", tags=("kv-cache", "decode"),
    question="Why does a KV cache speed up generation, and what does it cost?",
    answer=("Without it, each new token reruns the whole prefix: for {n} tokens after a {L}-token "
            "prompt the model processes {full:.0f} positions per step on average, instead of "
            "{cached} with the cache (plus attention over the cached keys). The cost is memory that "
            "grows linearly with context, which is why it gets quantized."),
    compute=_decode_cost,
)


def _fp8():
    x = np.array([0.1, 1.0, 300.0, 1000.0], np.float32)
    from qlearn import formats
    return {"e4m3": formats.round_to(x, "fp8_e4m3").tolist(),
            "e5m2": formats.round_to(x, "fp8_e5m2").tolist()}


question(
    id="ch12.fp8_cache", chapter="ch12", difficulty="medium", tags=("kv-cache", "fp8"),
    question="An FP8 cache needs no scale. Which FP8 variant suits it, and what goes wrong?",
    answer=("E4M3 has more mantissa (finer steps) but saturates at 448; E5M2 reaches 57344 with "
            "coarser steps. Rounding [0.1, 1, 300, 1000]: E4M3 gives {e4m3}, E5M2 gives {e5m2}. "
            "Without a per-tensor scale, values beyond E4M3's range saturate, so engines that use "
            "E4M3 for the cache add a per-tensor or per-head scale."),
    compute=_fp8,
)


def _order():
    p = kc._interleave_order(64)
    return {"block": sorted(p[:32].tolist())[14:18]}


question(
    id="ch12.channel_order", chapter="ch12", difficulty="hard", tags=("kv-cache", "llama.cpp"),
    question="A Hugging Face checkpoint and its GGUF conversion store K rows in different orders. "
             "Why does that change a q4_0 cache?",
    answer=("The converter permutes Q/K rows so rotary pairs are adjacent (2i, 2i+1); the HF "
            "order pairs (i, i + d/2). The 32-wide q4_0 blocks therefore group different "
            "channels: llama.cpp's first block holds HF channels 0..15 and 32..47 (sorted, "
            "around the seam: {block}). Channels sharing a scale differ, so the quantization "
            "error differs although the model computes the same function."),
    compute=_order,
)
