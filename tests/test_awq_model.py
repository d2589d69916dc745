"""Model-level AWQ and SmoothQuant on a small random Llama (needs qlearn.models/adapters)."""

import pytest
import torch

adapters = pytest.importorskip("qlearn.adapters")
models = pytest.importorskip("qlearn.models")

from qlearn import awq, smoothquant as sq  # noqa: E402


@pytest.fixture(scope="module")
def model_and_tokens():
    cfg = models.LlamaConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=256,
                             max_seq_len=128)
    m = models.LlamaModel(cfg).init_weights(seed=0).eval()
    with torch.no_grad():  # loud channels in the residual stream, as in real LLMs
        m.embed_tokens.weight[:, :3] *= 20
    g = torch.Generator().manual_seed(1)
    return m, torch.randint(0, 512, (8, 128), generator=g)


def _logit_err(q, m, tokens):
    """Relative squared error of q's logits against m's."""
    with torch.no_grad():
        ref, got = m(tokens), q(tokens)
    return float(((got - ref) ** 2).sum() / (ref ** 2).sum())


def test_fold_scales_keeps_the_function(model_and_tokens):
    m, tokens = model_and_tokens
    import copy
    q = copy.deepcopy(m)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in adapters.decoder_layers(q):
            for grp in adapters.scale_groups(layer):
                s = torch.rand(grp.linears[0].in_features, generator=g) + 0.5
                awq._fold_scales(grp.prev, grp.linears, s)
        torch.testing.assert_close(q(tokens[:2]), m(tokens[:2]), rtol=1e-4, atol=1e-4)


def test_awq_model_beats_rtn_and_leaves_original(model_and_tokens):
    m, tokens = model_and_tokens
    before = {k: v.clone() for k, v in m.state_dict().items()}
    q, ratios = awq.awq_model(m, tokens, bits=3, group_size=64, progress=False)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    # v_proj -> o_proj has equal shapes here (no GQA): 4 groups per layer
    assert len(ratios) == 4 * 2 and all(0 <= r < 1 for r in ratios.values())
    rtn = awq.rtn_model(m, 3, 64)
    assert _logit_err(q, m, tokens) < _logit_err(rtn, m, tokens)
    for lin in adapters.find_linears(q).values():  # every weight on a 3-bit grid per group
        w = lin.weight.reshape(lin.out_features, -1, 64)
        assert int(max(torch.unique(row).numel() for row in w.reshape(-1, 64))) <= 8


def test_smooth_model_exact_and_w8a8(model_and_tokens):
    m, tokens = model_and_tokens
    s = sq.smooth_model(m, tokens, 0.5, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(s(tokens[:2]), m(tokens[:2]), rtol=1e-4, atol=1e-4)
    plain = _logit_err(sq.w8a8_model(m, "per_tensor", "per_tensor"), m, tokens)
    smoothed = _logit_err(sq.w8a8_model(s, "per_tensor", "per_tensor"), m, tokens)
    assert smoothed < plain
    with pytest.raises(ValueError, match="alpha"):
        sq.smooth_model(m, tokens, 2.0)
