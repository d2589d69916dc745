"""qlearn.kvcache: formats, byte accounting, rotation, llama.cpp's layout, errors."""

import numpy as np
import pytest
import torch

from qlearn import formats, kquants, kvcache as kc
from qlearn.models import LlamaConfig, LlamaModel

CFG = LlamaConfig(vocab_size=300, dim=128, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=128,
                  max_seq_len=64)   # head_dim 64: every format and the rotation apply
HD = CFG.head_dim
TOL = dict(atol=1e-4, rtol=1e-4)


def _x(t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, t, HD, generator=g)
    x[..., 5] *= 8                                   # an outlier channel, as keys have
    return x


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LlamaModel(CFG).init_weights(0).eval()


def _ref_int(x, bits, group, axis, symmetric):
    """Readable reference: per group scale (fp16), round half even, clamp, back."""
    a = x.numpy().astype(np.float32)
    b, h, n, d = a.shape
    if axis == "token":
        g = a.reshape(b, h, n, d // group, group)
        red = -1
    else:
        g = a.reshape(b, h, n // group, group, d)
        red = 3
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (np.abs(g).max(red, keepdims=True) / np.float32(qmax)).astype(np.float16)
        scale = scale.astype(np.float32)
        q = np.clip(np.rint(g / scale), -qmax, qmax)
        out = q * scale
    else:
        qmax = 2 ** bits - 1
        lo = np.minimum(g.min(red, keepdims=True), 0)
        hi = np.maximum(g.max(red, keepdims=True), 0)
        s32 = (hi - lo) / np.float32(qmax)
        zp = np.clip(-np.rint(lo / s32), 0, qmax)
        scale = s32.astype(np.float16).astype(np.float32)
        q = np.clip(np.rint(g / scale) + zp, 0, qmax)
        out = (q - zp) * scale
    return torch.from_numpy(out.reshape(a.shape).astype(np.float32))


@pytest.mark.parametrize("t", ["int8", "int4", "int2"])
@pytest.mark.parametrize("axis,group", [("token", 64), ("token", 16), ("channel", 8)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int_round_trip_equals_reference(t, axis, group, symmetric):
    fmt = kc.cache_format(t, HD, axis, group, symmetric, rotate=False)
    x = _x()
    stored = kc.encode(x, fmt)
    torch.testing.assert_close(kc.decode(stored, fmt, HD), _ref_int(x, kc.INT_TYPES[t], group,
                                                                    axis, symmetric))
    assert sum(v.nbytes for v in stored.values()) == \
        2 * 3 * x.shape[2] // fmt.chunk() * fmt.chunk_bytes(HD)


@pytest.mark.parametrize("t", list(kc.GGML_TYPES))
def test_ggml_types_bit_for_bit_with_kquants(t):
    fmt = kc.cache_format(t, HD, rotate=False)
    x = _x()
    stored = kc.encode(x, fmt)["blocks"]
    want = kquants.quantize_ref(x.reshape(-1, HD).numpy(), kc.GGML_TYPES[t])
    np.testing.assert_array_equal(stored.reshape(want.shape), want)
    np.testing.assert_array_equal(kc.decode({"blocks": stored}, fmt, HD).reshape(-1, HD).numpy(),
                                  kquants.dequantize(want, kc.GGML_TYPES[t]))


@pytest.mark.parametrize("t", ["f16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_float_round_trips(t):
    fmt = kc.cache_format(t, HD)
    x = _x()
    back = kc.decode(kc.encode(x, fmt), fmt, HD)
    if t in kc.FLOAT_TYPES:
        want = x.to(kc.FLOAT_TYPES[t]).float()
    else:
        want = torch.from_numpy(formats.round_to(x.numpy(), t))
    torch.testing.assert_close(back, want, atol=0, rtol=0)


def test_hadamard_matches_llama_cpp_construction():
    h = kc.hadamard(64)
    torch.testing.assert_close(h @ h, torch.eye(64), atol=1e-6, rtol=0)
    torch.testing.assert_close(h, h.T)
    assert float(h[0, 0]) == pytest.approx(1 / 8) and float(h[1, 1]) == pytest.approx(-1 / 8)
    with pytest.raises(ValueError, match="power of two"):
        kc.hadamard(48)


def test_stored_keys_follow_llama_cpp_order_and_rotation():
    """K rows in the cache = ggml blocks of (k in GGUF interleaved order) @ H."""
    fmt_k = kc.cache_format("q4_0", HD)                 # rotate=True by default
    assert fmt_k.rot == 64
    perm = kc._interleave_order(HD)
    assert perm[:4].tolist() == [0, 32, 1, 33]
    cache = kc.QuantizedLayerCache(fmt_k, kc.cache_format("q8_0", HD, rot=64), HD, perm)
    k, v = _x(5, 1), _x(5, 2)
    k_back, v_back = cache.update(k, v)
    want = kquants.quantize_ref((k[..., perm] @ kc.hadamard(64)).reshape(-1, HD).numpy(), "Q4_0")
    np.testing.assert_array_equal(cache.ks.stored["blocks"].reshape(want.shape), want)
    deq = torch.from_numpy(kquants.dequantize(want, "Q4_0")).reshape(k.shape)
    torch.testing.assert_close(k_back, (deq @ kc.hadamard(64))[..., torch.argsort(perm)], **TOL)
    # the rotation helps: 4-bit keys with an outlier channel lose less after the rotation
    plain = kc.QuantizedLayerCache(kc.cache_format("q4_0", HD, rotate=False),
                                   kc.cache_format("q8_0", HD, rotate=False), HD, perm)
    k_plain, _ = plain.update(k, v)
    assert (k_back - k).pow(2).mean() < (k_plain - k).pow(2).mean()


def test_no_rotation_for_float_caches_or_odd_heads():
    assert kc.cache_format("f16", HD).rot == 0 and kc.cache_format("bf16", HD).rot == 0
    assert kc.cache_format("q8_0", 96).rot == 0          # llama.cpp: head_dim % 64 != 0
    assert kc.cache_format("q8_0", 128).rot == 128       # K: largest power of two dividing hd


@pytest.mark.parametrize("k_type,v_type,opts", [
    ("q4_0", "q8_0", {}), ("int4", "int2", {"group": 32, "symmetric": False}),
    ("fp8_e4m3", "f16", {"rotate": False}), ("f32", "bf16", {})])
def test_per_token_formats_decode_equals_full_forward(model, k_type, v_type, opts):
    """Per-token formats store each token independently: a full forward (all K/V written,
    then read) and incremental decoding see the same cache."""
    m = kc.with_kv_cache(model, k_type, v_type, **opts)
    x = torch.randint(0, CFG.vocab_size, (1, 24), generator=torch.Generator().manual_seed(3))
    cache = m.new_cache()
    with torch.no_grad():
        full = m(x)
        steps = torch.cat([m(x[:, :8], cache=cache)] +
                          [m(x[:, i:i + 1], cache=cache) for i in range(8, 24)], 1)
    torch.testing.assert_close(steps, full, **TOL)
    assert cache.nbytes() == kc.cache_bytes(k_type, v_type, CFG.n_layers, CFG.n_kv_heads, HD,
                                            24, **opts)


@pytest.mark.parametrize("opts", [
    {}, {"residual": 5}, {"k_axis": "channel", "group": 8}, {"axis": "channel", "group": 4,
                                                           "residual": 6}])
def test_bytes_equal_formula_at_every_length(model, opts):
    m = kc.with_kv_cache(model, "int4", "int2", **opts)
    cache = m.new_cache()
    x = torch.randint(0, CFG.vocab_size, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        m(x[:, :7], cache=cache)
        for i in range(7, 30):
            m(x[:, i:i + 1], cache=cache)
            assert cache.nbytes() == kc.cache_bytes("int4", "int2", CFG.n_layers, CFG.n_kv_heads,
                                                    HD, i + 1, batch=2, **opts)


def test_bytes_per_token_formula():
    # SmolLM2: 30 layers, 3 KV heads of 64; q8_0 blocks are 34 bytes per 32 values
    assert kc.bytes_per_token("f16", "f16", 30, 3, 64) == 30 * 3 * 2 * 64 * 2
    assert kc.bytes_per_token("q8_0", "q8_0", 30, 3, 64) == 30 * 3 * 2 * 2 * 34
    assert kc.bytes_per_token("q4_0", "q4_0", 30, 3, 64) == 30 * 3 * 2 * 2 * 18
    # int4 per token, groups of 32 channels, asymmetric: 32 code bytes + 2 * (2 + 1)
    assert kc.bytes_per_token("int4", "int4", 1, 1, 64, group=32, symmetric=False) == 2 * 38
    # per channel over groups of 32 tokens: per token 32 code bytes + 64 * 2 / 32 scale bytes
    assert kc.bytes_per_token("int4", "f16", 1, 1, 64, k_axis="channel", group=32) == \
        32 + 4 + 128


def test_kivi_keeps_residual_window_exact(model):
    m = kc.kivi(model, bits=2, group=4, residual=6)
    k_fmt, v_fmt = m.kv_formats
    assert (k_fmt.axis, v_fmt.axis, k_fmt.residual, k_fmt.symmetric) == ("channel", "token", 6,
                                                                         False)
    cache = kc.QuantizedLayerCache(k_fmt, v_fmt, HD)
    k, v = _x(17, 5), _x(17, 6)
    k_back, v_back = cache.update(k, v)
    # 17 tokens, window 6: K commits 8 tokens (two groups of 4), V commits 11 tokens
    assert cache.ks.n_stored == 8 and cache.vs.n_stored == 11
    torch.testing.assert_close(k_back[:, :, 8:], k[:, :, 8:].half().float())
    torch.testing.assert_close(v_back[:, :, 11:], v[:, :, 11:].half().float())
    assert (k_back[:, :, :8] - k[:, :, :8]).abs().max() > 0.01     # quantized


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="unknown KV cache type"):
        kc.with_kv_cache(model, "q3_k", "f16")
    small = LlamaModel(LlamaConfig(vocab_size=50, dim=64, n_layers=1, n_heads=4, n_kv_heads=2,
                                   ffn_dim=32))     # head_dim 16
    with pytest.raises(ValueError, match="multiple of 32"):
        kc.with_kv_cache(small, "q4_0", "f16")
    with pytest.raises(ValueError, match="residual"):
        kc.with_kv_cache(model, "int4", "int4", residual=-1)
    with pytest.raises(ValueError, match="axis"):
        kc.with_kv_cache(model, "int4", "int4", axis="head")
    with pytest.raises(ValueError, match="divide head_dim"):
        kc.with_kv_cache(model, "int4", "int4", group=48)
    with pytest.raises(ValueError, match="k_order"):
        kc.with_kv_cache(model, "q8_0", "q8_0", k_order="hf")
    with pytest.raises(TypeError, match="LlamaModel"):
        kc.with_kv_cache(torch.nn.Linear(2, 2), "q8_0", "q8_0")
    with pytest.raises(ValueError, match="bits"):
        kc.kivi(model, bits=3)
    with pytest.raises(ValueError, match="llama.cpp has no cache type"):
        kc.llama_cpp_perplexity("x.gguf", "text", "int4", "f16")


def test_copy_shares_weights_and_leaves_original_alone(model):
    m = kc.with_kv_cache(model, "q4_0", "q4_0")
    assert m.layers[0].self_attn.q_proj.weight is model.layers[0].self_attn.q_proj.weight
    assert type(model.new_cache().layers[0]).__name__ == "LayerCache"
    assert isinstance(m.new_cache().layers[0], kc.QuantizedLayerCache)


def test_stepped_perplexity_sees_the_cache_as_decoding_does(model):
    """llama_cpp_perplexity(step=): the same as one forward for a float cache; for KIVI, closer
    to token-by-token decoding than one forward (which quantizes all but the last window)."""
    from qlearn.models.evaluate import _stepped_logits, llama_cpp_perplexity

    x = torch.randint(0, CFG.vocab_size, (1, 64), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(_stepped_logits(model, x, 16), model(x), **TOL)
        kv = kc.kivi(model, bits=2, group=8, residual=16)
        one = _stepped_logits(kv, x, 1)
        err_step = (_stepped_logits(kv, x, 8) - one).abs().max()
        err_full = (kv(x) - one).abs().max()
    assert err_step < err_full / 3

    class Tok:
        def encode(self, text):
            return [int(t) for t in text.split()]

        def decode(self, ids):
            return " ".join(str(int(t)) for t in ids)

    text = " ".join(str(int(t)) for t in torch.randint(0, CFG.vocab_size, (128,)))
    a = llama_cpp_perplexity(model, Tok(), text, n_ctx=32)
    assert abs(llama_cpp_perplexity(model, Tok(), text, n_ctx=32, step=8) / a - 1) < 1e-5
    for bad in (0, 33, 2.0, True):
        with pytest.raises(ValueError, match="step must be"):
            llama_cpp_perplexity(model, Tok(), text, n_ctx=32, step=bad)
