"""qlearn.adapters: finding linears, capturing their inputs, swapping and fake-quantizing them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qlearn import adapters
from qlearn.models import LlamaConfig, LlamaModel, load


def small_model(n_kv_heads=2, tie=True, seed=0):
    cfg = LlamaConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, ffn_dim=128,
                      tie_embeddings=tie, max_seq_len=32)
    return LlamaModel(cfg).init_weights(seed).eval()


def tokens(n=2, t=16, vocab=300, seed=0):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def test_find_linears_names_and_forward_order():
    m = small_model()
    lins = adapters.find_linears(m)
    assert len(lins) == 7 * 2
    assert list(lins)[:7] == [f"layers.0.{s}" for s in adapters.LAYER_LINEARS]
    assert list(lins)[-1] == "layers.1.mlp.down_proj"
    assert "lm_head" not in lins and "lm_head" in adapters.find_linears(m, include_lm_head=True)
    assert lins["layers.1.self_attn.k_proj"] is m.layers[1].self_attn.k_proj
    assert all(isinstance(v, nn.Linear) for v in lins.values())
    # forward order: hooks fire in exactly the listed order
    fired = []
    hs = [mod.register_forward_pre_hook(lambda mod, a, n=n: fired.append(n)) for n, mod in lins.items()]
    m(tokens())
    for h in hs:
        h.remove()
    assert fired == list(lins)


def test_decoder_layers_callable_on_hidden_states():
    m = small_model()
    layers = adapters.decoder_layers(m)
    assert len(layers) == 2
    x = tokens(1, 8)
    h = m.embed_tokens(x)
    for layer in layers:
        h = layer(h)
    torch.testing.assert_close(m.lm_head(m.norm(h)), m(x))
    with pytest.raises(ValueError, match="layers"):
        adapters.decoder_layers(nn.Linear(2, 2))


def test_capture_inputs_matches_manual_computation():
    m = small_model()
    x = tokens(2, 12)
    names = ["layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "layers.1.self_attn.o_proj"]
    cap = adapters.capture_inputs(m, x, names)
    assert list(cap) == names
    with torch.no_grad():
        h0 = m.embed_tokens(x)
        q_in = m.layers[0].input_layernorm(h0)
        h1 = m.layers[0](h0)
        a = m.layers[1].self_attn
        h2 = h1 + a(m.layers[1].input_layernorm(h1))
        z = m.layers[1].post_attention_layernorm(h2)
        mlp = m.layers[1].mlp
        down_in = F.silu(mlp.gate_proj(z)) * mlp.up_proj(z)
    torch.testing.assert_close(cap[names[0]], q_in.reshape(-1, 64))
    torch.testing.assert_close(cap[names[1]], down_in.reshape(-1, 128))
    assert cap[names[2]].shape == (24, 64) and cap[names[2]].dtype == torch.float32
    # hooks are removed afterwards, 1-D tokens accepted
    assert all(not lin._forward_pre_hooks for lin in adapters.find_linears(m).values())
    one = adapters.capture_inputs(m, x[0], names[:1])
    torch.testing.assert_close(one[names[0]], q_in[0])


def test_capture_inputs_bad_input():
    m = small_model()
    with pytest.raises(ValueError, match="unknown linear"):
        adapters.capture_inputs(m, tokens(), ["layers.9.mlp.up_proj"])
    with pytest.raises(ValueError, match="integer"):
        adapters.capture_inputs(m, torch.zeros(2, 4), ["layers.0.mlp.up_proj"])
    with pytest.raises(ValueError, match="non-empty"):
        adapters.capture_inputs(m, torch.zeros(1, 0, dtype=torch.int64), ["layers.0.mlp.up_proj"])


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_replace_linears_in_place():
    m = small_model()
    x = tokens()
    ref = m(x)
    made = []
    adapters.replace_linears(m, lambda name, lin: made.append(name) or Counting(lin),
                             names=["layers.0.mlp.up_proj", "layers.1.self_attn.v_proj"])
    assert made == ["layers.0.mlp.up_proj", "layers.1.self_attn.v_proj"]
    assert isinstance(m.layers[0].mlp.up_proj, Counting)
    torch.testing.assert_close(m(x), ref)
    assert m.layers[1].self_attn.v_proj.calls == 1


def test_fake_quantize_linears_copy_and_original_untouched():
    m = small_model()
    x = tokens()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ref = m(x)
    same = adapters.fake_quantize_linears(m, lambda w: w.clone())
    torch.testing.assert_close(same(x), ref)

    def rtn4(w):  # symmetric 4-bit per output row
        s = w.abs().amax(1, keepdim=True) / 7
        return torch.clamp(torch.round(w / s), -8, 7) * s

    q = adapters.fake_quantize_linears(m, rtn4)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    w_hat = q.layers[0].mlp.up_proj.weight
    assert not torch.equal(w_hat, m.layers[0].mlp.up_proj.weight)
    assert torch.unique(w_hat[0] / (w_hat[0].abs().max() / 7)).round().numel() <= 16
    assert not torch.allclose(q(x), ref)
    # lm_head tied to the embedding: quantizing it must not change the embedding
    qh = adapters.fake_quantize_linears(m, rtn4, names=["lm_head"])
    assert torch.equal(qh.embed_tokens.weight, m.embed_tokens.weight)
    assert not torch.equal(qh.lm_head.weight, m.lm_head.weight)


def test_fake_quantize_linears_bad_quantizer():
    m = small_model()
    with pytest.raises(ValueError, match="shape"):
        adapters.fake_quantize_linears(m, lambda w: w[:, :-1])
    with pytest.raises(ValueError, match="NaN"):
        adapters.fake_quantize_linears(m, lambda w: w * float("nan"))
    with pytest.raises(ValueError, match="unknown linear"):
        adapters.fake_quantize_linears(m, lambda w: w, names=["layers.0.q_proj"])


def test_scale_groups_gqa_and_mha():
    gqa = small_model(n_kv_heads=2).layers[0]
    groups = adapters.scale_groups(gqa)
    assert [len(g.linears) for g in groups] == [3, 2, 1]  # no v->o under grouped-query attention
    assert groups[0].prev is gqa.input_layernorm and groups[0].inspect is gqa.self_attn
    assert groups[1].prev is gqa.post_attention_layernorm and groups[1].inspect is gqa.mlp
    assert groups[2].prev is gqa.mlp.up_proj and groups[2].linears == [gqa.mlp.down_proj]
    mha = small_model(n_kv_heads=4).layers[1]
    groups = adapters.scale_groups(mha)
    assert [g.name for g in groups][1] == "v_proj->o_proj"
    assert groups[1].prev is mha.self_attn.v_proj and groups[1].linears == [mha.self_attn.o_proj]


def test_scale_group_members_share_the_prev_output():
    m = small_model()
    x = tokens(1, 10)
    names = ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj",
             "layers.0.mlp.gate_proj", "layers.0.mlp.up_proj"]
    cap = adapters.capture_inputs(m, x, names)
    torch.testing.assert_close(cap[names[0]], cap[names[2]])
    torch.testing.assert_close(cap[names[3]], cap[names[4]])


def test_tiny_model_adapters():
    m, tok = load("tiny")
    lins = adapters.find_linears(m)
    assert len(lins) == 7 * len(m.layers)
    assert all(lin.in_features % 256 == 0 for lin in adapters.find_linears(m, include_lm_head=True).values())
    cap = adapters.capture_inputs(m, torch.tensor([tok.encode("To be, or not to be")]), ["layers.2.mlp.down_proj"])
    assert cap["layers.2.mlp.down_proj"].shape[1] == m.config.ffn_dim
