"""qlearn.models.quantize_for_inference: GGUF block bytes in every linear, fused decode path."""

import numpy as np
import pytest
import torch

from qlearn import adapters, kernels
from qlearn.models import dequantized_model, load, quantize_for_inference
from qlearn.models.quantized import QuantizedLinear, weight_bytes

# Decode path vs the float64 reference with the same 8-bit activations: the kernels' integer
# sums are exact, so only float32 rounding (of scale products, sums and every later layer)
# separates them. Relative to the largest |logit|.
Q8_REF_RTOL = 1e-4
# Decode path vs the dequantized model with float32 activations: the activation rounding
# (half a step of max|x_block| / 127 per entry) compounds through the layers. Stated bound,
# relative to the logits' standard deviation, measured ~0.01-0.05 on qlearn-tiny.
F32_REF_REL = 0.15
CACHED_REL = 2e-2
MATVEC_RTOL = 1e-5  # the kernels' float32 tolerance (tests/test_kernels.py)
TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_K_M", "Q5_K")


@pytest.fixture(scope="module")
def tiny():
    return load("tiny")


@pytest.fixture(scope="module")
def quantized(tiny):
    """qtype -> quantized qlearn-tiny, made once for the module."""
    cache = {}

    def get(qtype):
        if qtype not in cache:
            cache[qtype] = quantize_for_inference(tiny[0], qtype)
        return cache[qtype]
    return get


@pytest.fixture(scope="module")
def prompt(tiny):
    return torch.tensor([tiny[1].encode("ROMEO: what light through yonder window breaks")])


@pytest.mark.parametrize("qtype", TYPES)
def test_prefill_equals_dequantized_model_exactly(quantized, prompt, qtype):
    qm = quantized(qtype)
    ref = dequantized_model(qm)
    with torch.no_grad():
        assert torch.equal(qm(prompt), ref(prompt))


@pytest.mark.parametrize("qtype", TYPES)
def test_decode_equals_q8_activation_reference(quantized, prompt, qtype):
    qm = quantized(qtype)
    one = prompt[:, :1]
    with torch.no_grad():
        got = qm(one)
        want = dequantized_model(qm, activations="q8")(one)
        plain = dequantized_model(qm)(one)
    assert torch.allclose(got, want, rtol=0, atol=Q8_REF_RTOL * want.abs().max().item())
    err = (got - plain).abs().max().item()
    assert err <= F32_REF_REL * plain.std().item()
    fused = any(getattr(v, "fused", False) for v in adapters.find_linears(qm, True).values())
    if fused:  # the rounding is real: the fused path is not the f32 one
        assert err > 0
    else:  # no fused kernel (Q5_K): float32 activations, tiles dequantized
        assert err <= Q8_REF_RTOL * plain.abs().max().item()


def test_types_and_bytes(tiny, quantized):
    m = tiny[0]
    qm = quantized("Q4_K_M")
    assert set(qm.qtypes.values()) == {"Q4_K", "Q6_K"}  # Q6_K: LM head, some attn_v / ffn_down
    assert qm.qtypes["lm_head"] == "Q6_K"
    lins = adapters.find_linears(qm, include_lm_head=True)
    assert all(isinstance(v, QuantizedLinear) for v in lins.values())
    wb = weight_bytes(qm)
    for name, lin in lins.items():
        bs, ts = kernels.block_info(lin.qtype)
        assert wb[name] == lin.out_features * lin.in_features // bs * ts
    # the input model is untouched
    assert all(type(v) is torch.nn.Linear for v in adapters.find_linears(m, include_lm_head=True).values())
    # float linears count 4 bytes per weight
    assert sum(weight_bytes(m).values()) == 4 * sum(v.weight.numel() for v in
                                                    adapters.find_linears(m, include_lm_head=True).values())


def test_bf16_baseline(tiny, prompt):
    from qlearn.models.quantized import BF16Linear

    qm = quantize_for_inference(tiny[0], "BF16")
    lins = adapters.find_linears(qm, include_lm_head=True)
    assert all(isinstance(v, BF16Linear) for v in lins.values())
    assert sum(weight_bytes(qm).values()) == 2 * sum(v.weight.numel() for v in lins.values())
    with torch.no_grad():
        a, b = qm(prompt), tiny[0](prompt)
    assert (a - b).abs().max() <= 0.1 * b.std()  # bfloat16 keeps 8 significant bits


def test_row_length_fallback_like_llama_cpp():
    from qlearn.models import LlamaConfig, LlamaModel
    from qlearn.models.quantized import _plan

    model = LlamaModel(LlamaConfig(vocab_size=64, dim=576, n_layers=1, n_heads=9, n_kv_heads=3,
                                   ffn_dim=512))
    plan = _plan(model, "Q4_K", include_lm_head=True)
    assert plan["layers.0.self_attn.q_proj"] == "Q5_0"  # 576 is not a multiple of 256
    assert plan["layers.0.mlp.down_proj"] == "Q4_K"  # 512 is
    assert _plan(model, "Q6_K", True)["lm_head"] == "Q8_0"
    assert QuantizedLinear.from_linear(model.lm_head, "Q5_0").qtype == "Q5_0"


def test_activation_cache_is_keyed_by_tensor_and_version():
    torch.manual_seed(0)
    a = QuantizedLinear.from_linear(torch.nn.Linear(256, 32, bias=False), "Q4_K")
    b = QuantizedLinear.from_linear(torch.nn.Linear(256, 16, bias=False), "Q4_K", act_cache=a._act)
    x = torch.randn(1, 1, 256)
    ya = a(x)
    x.mul_(2)  # in place: the cached activation must not be reused
    yb = b(x)
    want = torch.from_numpy(kernels.matvec(b.q, "Q4_K", x.reshape(-1).numpy()))
    assert torch.equal(yb.reshape(-1), want)
    assert torch.equal(a(x).reshape(-1), torch.from_numpy(kernels.matvec(a.q, "Q4_K", x.reshape(-1).numpy())))
    assert ya.shape == (1, 1, 32)


def test_bias_and_bad_input(tiny):
    lin = torch.nn.Linear(256, 8)
    ql = QuantizedLinear.from_linear(lin, "Q8_0")
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.allclose(ql(x), torch.nn.functional.linear(x, ql.dequantized_weight(), lin.bias))
    with pytest.raises(ValueError, match="float32 tensor"):
        ql(x.double())
    with pytest.raises(ValueError, match=r"\(\.\.\., 256\)"):
        ql(torch.randn(1, 255))
    with pytest.raises(ValueError, match="unknown qtype_or_mix"):
        quantize_for_inference(tiny[0], "Q4_Z")
    with pytest.raises(ValueError, match="type name"):
        quantize_for_inference(tiny[0], 4)
    with pytest.raises(ValueError, match="no QuantizedLinear"):
        dequantized_model(tiny[0])
    with pytest.raises(ValueError, match="activations"):
        dequantized_model(quantize_for_inference(tiny[0], "Q8_0"), activations="int4")
    with pytest.raises(ValueError, match="in_features"):
        QuantizedLinear(np.zeros((2, 34), np.uint8), "Q8_0", 64)


# ---------------------------------------------------------------- SmolLM2-135M
@pytest.fixture(scope="module")
def smol():
    return load("smollm2-135m")


def _check_linears_on_own_inputs(model, checked):
    """Forward hooks: each one-token quantized linear equals ``kernels.matvec_reference`` on
    the very input it got (same exact integer sums; float32 rounding, MATVEC_RTOL)."""
    def check(mod, args, out):
        x = args[0]
        if x.numel() != mod.in_features:
            return
        xv = x.reshape(-1).numpy()
        want = kernels.matvec_reference(mod.q, mod.qtype, xv)
        W = mod.dequantized_weight().double().numpy()
        scale = np.abs(W) @ np.abs(xv.astype(np.float64)) * 1.01  # |activation codes| <= |x| * 1.01
        assert np.all(np.abs(out.reshape(-1).numpy() - want) <= MATVEC_RTOL * scale + 1e-30)
        checked.append(mod.qtype)
    return [m.register_forward_hook(check) for m in adapters.find_linears(model, True).values()
            if isinstance(m, QuantizedLinear)]


def test_smollm2_q4_k_m_decode_and_prefill(smol):
    """Prefill equals the dequantized model bit for bit. One token: every linear equals the
    reference on its own input; across 30 layers float32 rounding can flip one activation code
    (a jump of one q8 step, measured: the C kernels flip one in layer 8 of this prompt), so the
    logits get the looser CACHED_REL bound and the same argmax."""
    m, tok = smol
    qm = quantize_for_inference(m, "Q4_K_M")
    # llama.cpp's rules on 576-wide rows: Q5_0 / Q8_0 fallbacks beside Q4_K / Q6_K
    assert set(qm.qtypes.values()) == {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    ids = torch.tensor([tok.encode("The capital of France is")])
    checked = []
    with torch.no_grad():
        assert torch.equal(qm(ids), dequantized_model(qm)(ids))
        one = ids[:, :1]
        hooks = _check_linears_on_own_inputs(qm, checked)
        try:
            got = qm(one)
        finally:
            for h in hooks:
                h.remove()
        want = dequantized_model(qm, activations="q8")(one)
    assert len(checked) == len(qm.qtypes) and set(checked) == set(qm.qtypes.values())
    assert (got - want).abs().max() <= CACHED_REL * want.abs().max()
    assert got[0, -1].argmax() == want[0, -1].argmax()


def test_cached_decode_steps_use_the_fused_path(quantized, prompt):
    """Prefill into a KV cache, then one token per step. Inside every step each quantized
    linear equals the readable reference on the very input it got (float64, same 8-bit
    activations) to float32 rounding. Across the model, float32 rounding can flip an
    activation code in a later layer (a jump of one q8 step), so the logits are compared
    with a looser bound, CACHED_REL, relative to the largest |logit|."""
    qm = quantized("Q4_K_M")
    ref = dequantized_model(qm, activations="q8")
    checked = []
    hooks = _check_linears_on_own_inputs(qm, checked)
    ca, cb = qm.new_cache(), ref.new_cache()
    try:
        with torch.no_grad():
            a, b = qm(prompt, cache=ca), ref(prompt, cache=cb)
            tok = a[:, -1].argmax(-1, keepdim=True)
            for _ in range(3):
                a, b = qm(tok, cache=ca), ref(tok, cache=cb)
                assert (a - b).abs().max() <= CACHED_REL * b.abs().max()
                assert a.argmax() == b.argmax()
                tok = a[:, -1].argmax(-1, keepdim=True)
    finally:
        for h in hooks:
            h.remove()
    assert ca.length == prompt.shape[1] + 3
    assert set(checked) == {"Q4_K", "Q6_K"} and len(checked) == 3 * len(adapters.find_linears(qm, True))


def test_speed_helpers(tiny, quantized, prompt):
    from qlearn import speed

    assert speed.triad_bandwidth(1 << 16, repeats=2) > 0
    assert speed.matmul_flops(64, repeats=2) > 0
    r = speed.tokens_per_second(quantized("Q8_0"), prompt[0], new_tokens=2, repeats=1)
    assert set(r) == {"prefill", "decode"} and min(r.values()) > 0
    split = speed.decode_time_split(quantized("Q4_K"), prompt, steps=2)
    assert set(split) == set(speed.SPLIT_PARTS) and split["linears"] > 0
    assert split["activation quantization"] > 0
    with pytest.raises(ValueError, match="n must be"):
        speed.triad_bandwidth(10)
    with pytest.raises(ValueError, match="prompt must be"):
        speed.tokens_per_second(tiny[0], torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="KV cache"):
        speed.tokens_per_second(torch.nn.Linear(2, 2), prompt)
