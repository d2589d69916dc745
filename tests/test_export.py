"""qlearn.export.to_gguf against llama.cpp: byte-equal tensors, same perplexity, same generation.

Tests marked ``llama_cpp`` need the tools built by ``bash scripts/llama_cpp.sh`` and are skipped,
saying so, when they are absent. The others check the rules and the errors on their own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qlearn import export, gguf_mixes, imatrix as im, llama_cpp
from qlearn.gguf_io import read_gguf
from qlearn.models import generate, load, validation_text
from qlearn.models.evaluate import llama_cpp_perplexity

needs_llama = pytest.mark.skipif(not llama_cpp.available(),
                                 reason="llama.cpp tools not built: run `bash scripts/llama_cpp.sh`")
PRESETS = list(gguf_mixes.MIXES)
SMOLLM2_PRESETS = ("Q4_K_M", "Q2_K", "Q6_K", "IQ4_XS")  # representative: 576-wide rows fall back
PPL_TOLERANCE = 0.005  # the issue's bound: llama-perplexity within 0.5 % of qlearn's
PROMPT = "ROMEO:\nBut soft, what light through yonder"  # qlearn-tiny was trained on Shakespeare
# SmolLM2 continues this prompt with confident tokens. Greedy decoding is only comparable away
# from near-ties: llama.cpp's Q8_0 matmuls quantize the activations to 8 bits too, so two logits
# within rounding of each other may swap (a Shakespeare prompt diverged after 8 tokens).
SMOLLM2_PROMPT = "Once upon a time, in a small village by the sea,"
SLOW_TOOL_S = 3600  # llama-quantize IQ4_XS on SmolLM2 took over 600 s on a loaded 2-core machine
N_GREEDY = 16


@pytest.fixture(scope="module")
def tiny():
    return load("tiny")


def _mismatches(ours, ref) -> list:
    a, _ = read_gguf(ours)
    b, _ = read_gguf(ref)
    assert set(a) == set(b), set(a) ^ set(b)
    return [(n, a[n][1], b[n][1]) for n in a
            if a[n][1] != b[n][1] or not np.array_equal(a[n][0].view(np.uint8), b[n][0].view(np.uint8))]


# ---- rules and errors (no llama.cpp needed) ----------------------------------------------------

def test_new_preset_rules():
    smol = gguf_mixes.ModelConfig(n_layers=30, dim=576, ffn_dim=1536, vocab=49152, n_heads=9,
                                  n_kv_heads=3, tied_embeddings=True)
    tiny_cfg = gguf_mixes.ModelConfig(n_layers=6, dim=256, ffn_dim=768, vocab=4096, n_heads=8,
                                      n_kv_heads=2, tied_embeddings=True)
    deep = gguf_mixes.ModelConfig(n_layers=16, dim=256, ffn_dim=768, vocab=4096, n_heads=8,
                                  n_kv_heads=2, tied_embeddings=True)  # n // 8 = 2 "first" layers
    q8 = gguf_mixes.mix_plan("Q8_0", tiny_cfg)
    assert set(v for k, v in q8.items() if k.endswith("norm.weight")) == {"F32"}
    assert q8["token_embd.weight"] == "Q8_0" and q8["blk.0.ffn_down.weight"] == "Q8_0"
    q40 = gguf_mixes.mix_plan("Q4_0", tiny_cfg)
    assert q40["token_embd.weight"] == "Q6_K"  # the head gets Q6_K even in a legacy preset
    assert q40["blk.0.ffn_down.weight"] == "Q4_0"
    q40i = gguf_mixes.mix_plan("Q4_0", deep, has_imatrix=True)
    assert [q40i[f"blk.{i}.ffn_down.weight"] for i in range(3)] == ["Q4_1", "Q4_1", "Q4_0"]
    assert gguf_mixes.mix_plan("Q4_0", tiny_cfg, has_imatrix=True)["blk.0.ffn_down.weight"] == "Q4_0"
    iq = gguf_mixes.mix_plan("IQ4_XS", deep)
    assert iq["blk.0.attn_v.weight"] == "Q5_K"  # n_gqa = 4
    assert iq["blk.0.ffn_down.weight"] == "Q5_K"  # first eighth, no imatrix
    assert gguf_mixes.mix_plan("IQ4_XS", deep, has_imatrix=True)["blk.0.ffn_down.weight"] == "IQ4_XS"
    l3 = gguf_mixes.mix_plan("Q3_K_L", tiny_cfg)
    assert {l3[f"blk.2.{t}.weight"] for t in ("attn_v", "attn_output", "ffn_down")} == {"Q5_K"}
    assert gguf_mixes.mix_plan("IQ4_XS", smol)["blk.3.attn_q.weight"] == "IQ4_NL"  # 576 % 256 -> fallback
    assert gguf_mixes.mix_plan("Q4_K_M", smol, pure=True)["token_embd.weight"] == "Q5_0"
    assert gguf_mixes.mix_plan("Q4_K", tiny_cfg)["token_embd.weight"] == "Q4_K"  # a type name is pure
    assert gguf_mixes.mix_plan("F16", tiny_cfg)["blk.0.attn_q.weight"] == "F16"


def test_to_gguf_refuses_bad_requests(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown mix 'Q4_K_L'"):
        export.to_gguf(model, tmp_path / "x.gguf", "Q4_K_L", tokenizer=tok)
    with pytest.raises(TypeError, match="LlamaModel"):
        export.to_gguf(torch.nn.Linear(4, 4), tmp_path / "x.gguf", tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        export.to_gguf(model, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="not a weight matrix of this model"):
        export.to_gguf(model, tmp_path / "x.gguf", imatrix={"blk.40.attn_q.weight": np.ones(256)},
                       tokenizer=tok)
    with pytest.raises(ValueError, match="has 576 values, the tensor has 256 columns"):
        export.to_gguf(model, tmp_path / "x.gguf", imatrix={"blk.0.attn_q.weight": np.ones(576)},
                       tokenizer=tok)
    with pytest.raises(ValueError, match="not a GGUF file"):
        (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
        export.to_gguf(model, tmp_path / "x.gguf", imatrix=tmp_path / "bad.gguf", tokenizer=tok)


def test_unloadable_model_refused(tiny, tmp_path):
    from qlearn.models.tokenizer import train_bpe

    model, tok = tiny
    small = train_bpe(validation_text()[:5000], vocab_size=300)
    with pytest.raises(ValueError, match="300 tokens but the model's embedding has 4096 rows"):
        export.to_gguf(model, tmp_path / "x.gguf", "F32", tokenizer=small)
    broken = load("tiny")[0]
    with torch.no_grad():
        broken.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layers.1.mlp.up_proj.weight contains NaN"):
        export.to_gguf(broken, tmp_path / "x.gguf", "Q4_K_M", tokenizer=tok)


def test_imatrix_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    means = {"blk.0.attn_q.weight": rng.random(256, dtype=np.float32),
             "blk.0.ffn_down.weight": rng.random(768, dtype=np.float32)}
    path = im.write_imatrix(tmp_path / "i.gguf", means, n_tokens=1024)
    back = im.read_imatrix(path)
    assert set(back) == set(means)
    for k in means:  # sums = mean * n, read back as sums / n in float32
        np.testing.assert_allclose(back[k], means[k], rtol=1e-6)
    with pytest.raises(ValueError, match="no imatrix file"):
        im.read_imatrix(tmp_path / "missing.gguf")


def test_gguf_round_trip_and_imatrix_names(tiny, tmp_path):
    model, tok = tiny
    path = export.to_gguf(model, tmp_path / "f32.gguf", "F32", tokenizer=tok)
    back, tok2 = load(path)
    x = torch.tensor([tok.encode(validation_text()[:400])[:64]])
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    assert tok2.encode("Hello 123 world") == tok.encode("Hello 123 world")
    imat, n = im.compute_model_imatrix(model, tok, validation_text()[:20000], n_ctx=128, n_chunks=2)
    assert n == 256 and len(imat) == 7 * model.config.n_layers
    assert imat["blk.0.ffn_down.weight"].shape == (model.config.ffn_dim,)
    with pytest.raises(ValueError, match="need at least n_ctx"):
        im.compute_model_imatrix(model, tok, "too short", n_ctx=128)


# ---- against llama.cpp ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_files(tiny, tmp_path_factory):
    model, tok = tiny
    d = tmp_path_factory.mktemp("tiny")
    f32 = export.to_gguf(model, d / "f32.gguf", "F32", tokenizer=tok)
    text = d / "calib.txt"
    text.write_text(validation_text()[:30000])
    imatrix = d / "imatrix.gguf"
    llama_cpp.run("llama-imatrix", "-m", f32, "-f", text, "-o", imatrix, "-c", "128", "--chunks", "8",
                  "-t", "2", "--no-ppl")
    return d, f32, imatrix


@needs_llama
@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("preset", PRESETS)
def test_tiny_byte_equal_to_llama_quantize(tiny, tiny_files, preset, use_imatrix):
    model, tok = tiny
    d, f32, imatrix = tiny_files
    extra = ["--imatrix", imatrix] if use_imatrix else []
    ref = d / f"{preset}-{use_imatrix}-ref.gguf"
    llama_cpp.run("llama-quantize", *extra, f32, ref, preset, "2")
    ours = export.to_gguf(model, d / f"{preset}-{use_imatrix}.gguf", preset,
                          imatrix=imatrix if use_imatrix else None, tokenizer=tok)
    assert _mismatches(ours, ref) == []


@needs_llama
def test_tiny_perplexity_and_greedy_match_llama_cpp(tiny, tiny_files, tmp_path):
    from qlearn import deploy

    model, tok = tiny
    text = validation_text()[:12000]
    for preset in ("Q8_0", "Q4_K_M"):
        path = export.to_gguf(model, tmp_path / f"{preset}.gguf", preset, tokenizer=tok)
        qm, qt = load(path)
        ours = llama_cpp_perplexity(qm, qt, text, n_ctx=128)
        theirs = deploy.llama_perplexity(path, text, n_ctx=128)
        assert abs(ours / theirs - 1) < PPL_TOLERANCE, (preset, ours, theirs)
    assert deploy.llama_generate(tmp_path / "Q8_0.gguf", PROMPT, N_GREEDY) == \
        generate(*load(tmp_path / "Q8_0.gguf"), PROMPT, N_GREEDY)


@pytest.fixture(scope="module")
def smollm2_files(tmp_path_factory):
    model, tok = load("smollm2-135m")
    d = tmp_path_factory.mktemp("smollm2")
    f32 = export.to_gguf(model, d / "f32.gguf", "F32", tokenizer=tok)
    text = d / "calib.txt"
    text.write_text(validation_text()[:20000])
    imatrix = d / "imatrix.gguf"
    llama_cpp.run("llama-imatrix", "-m", f32, "-f", text, "-o", imatrix, "-c", "128", "--chunks", "4",
                  "-t", "2", "--no-ppl", timeout=SLOW_TOOL_S)
    return model, tok, d, f32, imatrix


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("preset", SMOLLM2_PRESETS)
def test_smollm2_byte_equal_with_imatrix(smollm2_files, preset):
    model, tok, d, f32, imatrix = smollm2_files
    ref = d / f"{preset}-ref.gguf"
    llama_cpp.run("llama-quantize", "--imatrix", imatrix, f32, ref, preset, "2", timeout=SLOW_TOOL_S)
    ours = export.to_gguf(model, d / f"{preset}.gguf", preset, imatrix=imatrix, tokenizer=tok)
    assert _mismatches(ours, ref) == []
    ref.unlink()


@needs_llama
@pytest.mark.slow
def test_smollm2_perplexity_and_greedy_match_llama_cpp(smollm2_files):
    from qlearn import deploy

    model, tok, d, _, _ = smollm2_files
    text = tok.decode(tok.encode(validation_text())[:2 * 512 + 16])
    path = export.to_gguf(model, d / "Q8_0.gguf", "Q8_0", tokenizer=tok)
    qm, qt = load(path)
    ours = llama_cpp_perplexity(qm, qt, text, n_ctx=512)
    theirs = deploy.llama_perplexity(path, text, n_ctx=512)
    assert abs(ours / theirs - 1) < PPL_TOLERANCE, (ours, theirs)
    assert deploy.llama_generate(path, SMOLLM2_PROMPT, N_GREEDY) == generate(qm, qt, SMOLLM2_PROMPT, N_GREEDY)
