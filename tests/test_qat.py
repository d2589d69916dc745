"""qlearn.qat: the STE and LSQ gradients, convert == uniform.quantize_affine, BitNet's ternary grid."""

import math

import numpy as np
import pytest
import torch

from qlearn import adapters, qat, uniform
from qlearn.models import LlamaConfig, LlamaModel

SMALL = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                    max_seq_len=16)


def small_model(seed=0):
    return LlamaModel(SMALL).init_weights(seed).eval()


def same_bytes(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --- the grid ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mapping", qat.MAPPINGS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("block", ["tensor", "channel", "group"])
def test_forward_equals_the_core_bit_for_bit(mapping, bits, block):
    w = torch.from_numpy(np.random.default_rng(bits).standard_normal((12, 32)).astype(np.float32))
    w[3] = w[3].abs()  # a row with no negative value: the mappings treat it differently
    bs = {"tensor": None, "channel": (1, 32), "group": (1, 8)}[block]
    ref = uniform.quantize(w.numpy(), bits, block_size=bs, mapping=mapping)
    w_hat = qat.fake_quantize_ste(w, bits, bs, mapping)
    assert same_bytes(w_hat.detach().numpy(), uniform.dequantize(ref))
    fixed = qat.fake_quantize_ste(w, bits, bs, mapping, scale=torch.from_numpy(ref.scale),
                                  zero_point=torch.from_numpy(ref.zero_point))
    assert torch.equal(fixed, w_hat)


def test_ste_backward_is_identity_inside_and_zero_where_clamped():
    # 2-bit symmetric grid: codes -1..1; scale 1 -> x/scale rounds to -3 -1 0 0 1 3 -2 2
    x = torch.tensor([-3.0, -1.4, -0.2, 0.3, 1.2, 2.6, -1.6, 1.5], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    y = qat.fake_quantize_ste(x, 2, None, "symmetric", scale=torch.tensor([1.0]))
    assert y.tolist() == [-1.0, -1.0, -0.0, 0.0, 1.0, 1.0, -1.0, 1.0]
    y.backward(upstream)
    # round(1.5) = 2 (half to even) is outside [-1, 1]: clamped, no gradient
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0]


def test_ste_backward_asymmetric_uses_the_zero_point():
    # 2-bit asymmetric: codes 0..3, scale 0.5, zero point 1 -> representable [-0.5, 1.0]
    x = torch.tensor([-1.0, -0.5, 0.2, 1.0, 1.3], requires_grad=True)
    y = qat.fake_quantize_ste(x, 2, None, "asymmetric", scale=torch.tensor([0.5]),
                              zero_point=torch.tensor([1.0]))
    # codes round(x/0.5)+1 = -1 0 1 3 4 (0.4 rounds to 0) -> clamped to 0 0 1 3 3
    assert y.tolist() == [-0.5, -0.5, 0.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_ste_dynamic_scale_passes_everything():
    x = torch.randn(4, 16, requires_grad=True)
    qat.fake_quantize_ste(x, 3, (1, 16), "symmetric").sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # absmax scale: nothing is clamped


# --- LSQ ---------------------------------------------------------------------------------------

def test_lsq_step_gradient_formula_by_hand():
    # 3 bits: Q_N = Q_P = 3, s = 1
    x = torch.tensor([-5.0, -3.0, -1.3, 0.4, 2.6, 3.0, 7.0])
    g = qat.lsq_step_gradient(x, torch.tensor(1.0), 3, 3)
    expected = [-3.0, -3.0, -1.0 + 1.3, 0.0 - 0.4, 3.0 - 2.6, 3.0, 3.0]
    assert torch.allclose(g, torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("block", [None, (1, 16), (1, 4)])
@pytest.mark.parametrize("bits", [2, 4])
def test_lsq_step_gradient_equals_finite_difference_of_the_surrogate(block, bits):
    rng = np.random.default_rng(bits)
    w = torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32))
    quant = qat.LSQQuantizer(w, bits, block, init="lsq")
    with torch.no_grad():
        quant.step.mul_(0.7)  # push some weights beyond the range
    upstream = torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32))
    w_param = w.clone().requires_grad_(True)
    (quant(w_param) * upstream).sum().backward()
    bs = quant.block_size
    # independent: the surrogate x_hat(s) = s * (clamp(x/s, -Q_N, Q_P) + r), r = round(.) - (.)
    # frozen at s0, differentiated by central differences in float64, times g = 1/sqrt(N Q_P)
    q_p = 2 ** (bits - 1) - 1
    s0 = quant.step.detach().double().numpy()
    x = w.double().numpy()
    s_full = np.kron(s0, np.ones(bs)) if s0.size > 1 else np.full(x.shape, s0.item())
    v0 = np.clip(x / s_full, -q_p, q_p)
    r = np.round(v0) - v0

    def surrogate(s_full_):
        return s_full_ * (np.clip(x / s_full_, -q_p, q_p) + r)

    h = 1e-6
    d = (surrogate(s_full + h) - surrogate(s_full - h)) / (2 * h) * upstream.double().numpy()
    n_blocks = tuple(n // b for n, b in zip(x.shape, bs))
    fd = d.reshape(n_blocks[0], bs[0], n_blocks[1], bs[1]).sum(axis=(1, 3))
    g = 1 / math.sqrt(math.prod(bs) * q_p)
    np.testing.assert_allclose(quant.step.grad.double().numpy().reshape(n_blocks), fd * g,
                               rtol=1e-4, atol=1e-5)
    # the weights' gradient: straight through strictly inside the range, zero outside
    v = x / s_full
    inside = (v > -q_p) & (v < q_p)
    np.testing.assert_array_equal(w_param.grad.numpy(), (upstream.numpy() * inside))


def test_lsq_init_absmax_starts_at_rtn_and_paper_init():
    w = torch.randn(8, 32)
    q = qat.LSQQuantizer(w, 4, (1, 32))
    assert torch.equal(q(w), qat.fake_quantize_ste(w, 4, (1, 32)))
    p = qat.LSQQuantizer(w, 4, None, init="lsq")
    assert torch.allclose(p.step, 2 * w.abs().mean() / math.sqrt(7))
    assert math.isclose(p.grad_scale, 1 / math.sqrt(w.numel() * 7))


# --- prepare / train / convert -----------------------------------------------------------------

def test_prepare_replaces_exactly_the_adapter_linears():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = qat.prepare(model, 3, 16, method="ste")
    names = adapters.find_linears(q)
    assert all(isinstance(m, qat.QATLinear) for m in names.values())
    assert len(names) == 7 * SMALL.n_layers
    assert isinstance(q.lm_head, torch.nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(isinstance(m, torch.nn.Linear) for m in adapters.find_linears(model).values())


@pytest.mark.parametrize("method,mapping,group", [("ste", "symmetric", None),
                                                  ("ste", "asymmetric", 16),
                                                  ("ste", "symmetric_offset", 8),
                                                  ("ste", "asymmetric_minmax", None),
                                                  ("lsq", "symmetric", 8)])
def test_convert_equals_quantize_affine_bit_for_bit(method, mapping, group):
    torch.manual_seed(0)
    model = small_model()
    q = qat.prepare(model, 2, group, method=method, mapping=mapping, activations_bits=8)
    tokens = torch.randint(0, SMALL.vocab_size, (400,))
    log = qat.train(q, tokens, steps=3, lr=1e-3, batch=2, seq=16)
    assert len(log["loss"]) == 3 and log["tokens"] == 3 * 2 * 16
    converted = qat.convert(q)
    for name, m in adapters.find_linears(converted).items():
        assert isinstance(m, qat.QuantizedLinear)
        src = adapters.find_linears(q)[name]
        w = src.weight.detach().numpy()
        if method == "ste":  # the grid is the core's own choice for these weights
            ref = uniform.quantize(w, 2, block_size=src.block_size, mapping=mapping)
        else:  # the learned step sizes
            ref = uniform.quantize_affine(w, src.lsq.step.detach().numpy(),
                                          np.zeros(src.lsq.step.shape, np.int32), 2,
                                          block_size=src.block_size, mapping="symmetric")
        got = m.qtensor
        assert same_bytes(got.codes, ref.codes) and same_bytes(got.scale, ref.scale)
        assert np.array_equal(got.zero_point, ref.zero_point) and got.mapping == mapping
        assert same_bytes(m.weight.numpy(), src.weight_hat().detach().numpy())
    x = torch.randint(0, SMALL.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(converted(x), q(x))  # same logits -> same perplexity


def test_trained_weights_move_and_loss_is_finite():
    torch.manual_seed(0)
    q = qat.prepare(small_model(), 4, None, method="lsq")
    step0 = q.layers[0].mlp.up_proj.lsq.step.detach().clone()
    log = qat.train(q, torch.randint(0, SMALL.vocab_size, (300,)), steps=2, lr=1e-3, batch=2,
                    seq=16)
    assert all(math.isfinite(v) for v in log["loss"])
    assert not torch.equal(step0, q.layers[0].mlp.up_proj.lsq.step.detach())
    assert log["wall_s"] > 0 and log["cpu_s"] >= 0


# --- BitNet b1.58 ------------------------------------------------------------------------------

def test_ternarize_hand_computed():
    w = np.array([[0.5, -1.5, 0.05], [2.0, -0.1, 0.0]], np.float32)
    gamma = torch.from_numpy(w).abs().mean().numpy()  # torch's float32 mean: 4.15 / 6
    assert math.isclose(float(gamma), 4.15 / 6, rel_tol=1e-6)
    q = qat.ternarize(w)
    assert q.codes.dtype == np.int8 and q.codes.tolist() == [[1, -1, 0], [1, 0, 0]]
    assert q.scale.shape == (1, 1) and q.scale[0, 0] == gamma
    assert q.bits == 2 and q.symmetric and q.block_size == (2, 3)
    np.testing.assert_array_equal(uniform.dequantize(q), q.codes * gamma)
    z = qat.ternarize(torch.zeros(2, 4))
    assert z.codes.tolist() == [[0] * 4] * 2 and z.scale[0, 0] == np.float32(qat.TERNARY_EPS)


def test_bitlinear_forward_and_plain_ste_gradient():
    lin = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.5, 0.05], [2.0, -0.1, 0.0]]))
    b = qat.BitLinear(lin)
    gamma = torch.tensor(4.15 / 6, dtype=torch.float32)
    x = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    # activations: absmax 2 -> scale 2/127, codes round(x * 63.5) = 64 (63.5 -> even), -127, 32
    s = torch.tensor(2.0) / 127
    x_q = torch.tensor([64.0, -127.0, 32.0]) * s
    w_q = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, 0.0]]) * gamma.float()
    y = b(x)
    assert torch.allclose(y, x_q[None] @ w_q.T, atol=1e-6)
    y.sum().backward()
    assert torch.allclose(x.grad, w_q.sum(0)[None], atol=1e-6)  # straight through activations
    assert torch.equal(b.weight.grad, x_q[None].expand(2, 3).detach())  # and weights, even clamped


def test_convert_bitnet_holds_ternary_codes():
    q = qat.prepare_bitnet(small_model())
    conv = qat.convert(q)
    x = torch.randint(0, SMALL.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(conv(x), q(x))
    for name, m in adapters.find_linears(conv).items():
        assert set(np.unique(m.qtensor.codes)) <= {-1, 0, 1}
        ref = qat.ternarize(adapters.find_linears(q)[name].weight.detach())
        assert same_bytes(m.qtensor.codes, ref.codes) and same_bytes(m.qtensor.scale, ref.scale)


# --- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda: qat.fake_quantize_ste(np.ones(4, np.float32), 4), TypeError, "torch.Tensor"),
    (lambda: qat.fake_quantize_ste(torch.ones(4), 1), ValueError, "bits"),
    (lambda: qat.fake_quantize_ste(torch.ones(4), 4, None, "sym"), ValueError, "mapping"),
    (lambda: qat.fake_quantize_ste(torch.tensor([1.0, float("nan")]), 4), ValueError, "finite"),
    (lambda: qat.fake_quantize_ste(torch.ones(2, 6), 4, (1, 4)), ValueError, "divide"),
    (lambda: qat.fake_quantize_ste(torch.ones(4, dtype=torch.int32), 4), ValueError, "floating"),
    (lambda: qat.fake_quantize_ste(torch.ones(4), 4, scale=torch.tensor([0.0])), ValueError,
     "positive"),
    (lambda: qat.fake_quantize_ste(torch.ones(4), 2, None, "symmetric_offset",
                                   scale=torch.ones(1), zero_point=torch.ones(1)), ValueError,
     "fixes the zero point"),
    (lambda: qat.fake_quantize_ste(torch.ones(4), 4, scale=torch.ones(2)), ValueError, "per block"),
    (lambda: qat.fake_quantize_ste(torch.ones(4), 4, zero_point=torch.ones(1)), ValueError,
     "without scale"),
    (lambda: qat.prepare(small_model(), 4, method="pact"), ValueError, "method"),
    (lambda: qat.prepare(small_model(), 4, group_size=24), ValueError, "divide"),
    (lambda: qat.prepare(small_model(), 4, group_size=0), ValueError, "group_size"),
    (lambda: qat.prepare(small_model(), 9), ValueError, "bits"),
    (lambda: qat.prepare(small_model(), 4, method="lsq", mapping="asymmetric"), ValueError,
     "symmetric"),
    (lambda: qat.convert(small_model()), ValueError, "prepare"),
    (lambda: qat.LSQQuantizer(torch.ones(4, 4), 4, init="zeros"), ValueError, "init"),
    (lambda: qat.LSQQuantizer(torch.ones(4, 4), 4)(torch.ones(4, 5)), ValueError, "shape"),
    (lambda: qat.BitLinear(torch.nn.Conv1d(2, 2, 1)), TypeError, "nn.Linear"),
    (lambda: qat.ternarize([[1, 2]]), ValueError, "floating"),
    (lambda: qat.train(qat.prepare(small_model(), 4), torch.ones(3, 3).long(), 1), ValueError,
     "1-D"),
    (lambda: qat.train(qat.prepare(small_model(), 4), torch.ones(10).long(), 1), ValueError,
     "tokens"),
    (lambda: qat.train(qat.prepare(small_model(), 4), torch.ones(100).long(), 0, seq=8),
     ValueError, "steps"),
    (lambda: qat.train(qat.prepare(small_model(), 4), torch.ones(100).long(), 1, lr=-1.0, seq=8),
     ValueError, "lr"),
])
def test_bad_inputs_get_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
