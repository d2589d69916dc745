"""The KV cache inside qlearn.models: cached decoding equals the full forward."""

import time

import pytest
import torch

from qlearn.models import LlamaConfig, LlamaModel, generate, load, validation_text
from qlearn.models.llama import KVCache, LayerCache

SMALL = LlamaConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                    max_seq_len=32)
FLOAT32_TOL = dict(atol=1e-4, rtol=1e-4)  # summation order differs (one row vs a causal block)


@pytest.fixture(scope="module")
def tiny():
    return load("tiny")


@pytest.fixture(scope="module")
def smol():
    return load("smollm2-135m")


@torch.no_grad()
def _incremental(model, tokens, prefill):
    """Logits (1, T, V) from a prefill of `prefill` tokens, then one token per step."""
    cache = model.new_cache()
    out = [model(tokens[:, :prefill], cache=cache)]
    for i in range(prefill, tokens.shape[1]):
        out.append(model(tokens[:, i:i + 1], cache=cache))
    assert cache.length == tokens.shape[1]
    return torch.cat(out, dim=1)


def _text_tokens(tok, n):
    return torch.tensor([tok.encode(validation_text()[:20000])[:n]])


@pytest.mark.parametrize("name", ["tiny", "smol"])
def test_cached_decode_equals_full_forward(name, request):
    model, tok = request.getfixturevalue(name)
    x = _text_tokens(tok, 48)
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(_incremental(model, x, 16), full, **FLOAT32_TOL)
    # a prefill in two chunks (the second chunk needs an offset causal mask)
    cache = model.new_cache()
    with torch.no_grad():
        a = model(x[:, :20], cache=cache)
        b = model(x[:, 20:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, **FLOAT32_TOL)


def test_cache_contents_are_rotated_keys_and_values():
    torch.manual_seed(0)
    model = LlamaModel(SMALL).init_weights(0).eval()
    x = torch.randint(0, SMALL.vocab_size, (2, 10))
    cache = model.new_cache()
    with torch.no_grad():
        model(x, cache=cache)
    assert isinstance(cache, KVCache) and cache.length == 10 and cache.batch == 2
    hd = SMALL.head_dim
    assert cache.layers[0].k.shape == (2, SMALL.n_kv_heads, 10, hd)
    assert cache.nbytes() == SMALL.n_layers * 2 * 2 * SMALL.n_kv_heads * 10 * hd * 4
    # layer 0's values are v_proj of the normed embeddings (no rotary on V)
    attn = model.layers[0].self_attn
    with torch.no_grad():
        h = model.layers[0].input_layernorm(model.embed_tokens(x))
        v = attn.v_proj(h).view(2, 10, SMALL.n_kv_heads, hd).transpose(1, 2)
    torch.testing.assert_close(cache.layers[0].v, v)


def test_cache_factory_is_used():
    calls = []

    class Counting(LayerCache):
        def update(self, k, v):
            calls.append(k.shape[2])
            return super().update(k, v)

    model = LlamaModel(SMALL).init_weights(0).eval()
    for layer in model.layers:
        layer.self_attn.cache_factory = Counting
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.int64))   # no cache argument: a temporary store
    assert calls == [5, 5]


def test_cache_bad_inputs():
    model = LlamaModel(SMALL).init_weights(0).eval()
    with pytest.raises(TypeError, match="KVCache"):
        model(torch.zeros(1, 3, dtype=torch.int64), cache=[])
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.int64), cache=cache)
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(1, 1, dtype=torch.int64), cache=cache)


def test_generate_cached_equals_recomputed(tiny):
    model, tok = tiny
    prompt = validation_text()[:250]
    ctx = model.config.max_seq_len
    n_prompt = len(tok.encode(prompt))
    assert n_prompt + 30 > ctx > n_prompt  # crosses the window: the slide is exercised too
    new = ctx - n_prompt + 20
    assert generate(model, tok, prompt, new, cache=True) == \
        generate(model, tok, prompt, new, cache=False)


def test_generate_with_cache_is_faster(smol):
    model, tok = smol
    prompt = validation_text()[:600]
    t0 = time.perf_counter()
    a = generate(model, tok, prompt, 12, cache=True, stop_at_eos=False)
    t1 = time.perf_counter()
    b = generate(model, tok, prompt, 12, cache=False, stop_at_eos=False)
    t2 = time.perf_counter()
    assert a == b
    assert (t2 - t1) > 2 * (t1 - t0)
