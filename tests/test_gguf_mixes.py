"""qlearn.gguf_mixes: llama.cpp's per-tensor type rules and the resulting bits per weight."""

import math

import pytest

from qlearn import gguf_mixes as gm

CFG = gm.LLAMA2_7B
N = CFG.n_layers
# use_more_bits for 32 layers, written out from the rule's description: layers 0-3 (first
# eighth), 28-31 (last eighth), and 4 + 2, 4 + 5, ... (every third layer in between).
MORE_BITS_32 = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}


def test_use_more_bits_pattern():
    assert {i for i in range(32) if gm.use_more_bits(i, 32)} == MORE_BITS_32
    # 30 layers (SmolLM2-135M): eighth = 3, last eighth from 7*30//8 = 26
    assert {i for i in range(30) if gm.use_more_bits(i, 30)} == {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}


def _layers_with(plan, tensor, qtype):
    return {i for i in range(N) if plan[f"blk.{i}.{tensor}.weight"] == qtype}


def test_q4_k_m_llama2_7b():
    p = gm.mix_plan("Q4_K_M", CFG)
    assert p["output.weight"] == "Q6_K"
    assert p["token_embd.weight"] == "Q4_K"
    assert p["output_norm.weight"] == "F32" and p["blk.7.attn_norm.weight"] == "F32"
    assert _layers_with(p, "attn_v", "Q6_K") == MORE_BITS_32
    assert _layers_with(p, "ffn_down", "Q6_K") == MORE_BITS_32
    assert _layers_with(p, "attn_v", "Q4_K") == set(range(N)) - MORE_BITS_32
    for t in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
        assert _layers_with(p, t, "Q4_K") == set(range(N))


def test_q4_k_s_and_q5_k_m():
    s = gm.mix_plan("Q4_K_S", CFG)
    assert _layers_with(s, "attn_v", "Q5_K") == {0, 1, 2, 3}
    assert _layers_with(s, "ffn_down", "Q5_K") == {0, 1, 2, 3}  # first eighth of 32
    assert s["output.weight"] == "Q6_K" and s["blk.10.ffn_down.weight"] == "Q4_K"
    m = gm.mix_plan("Q5_K_M", CFG)
    assert _layers_with(m, "ffn_down", "Q6_K") == MORE_BITS_32
    assert m["blk.4.attn_q.weight"] == "Q5_K" and m["token_embd.weight"] == "Q5_K"


def test_q3_k_m_and_q2_k():
    p = gm.mix_plan("Q3_K_M", CFG)
    assert _layers_with(p, "attn_v", "Q5_K") == {0, 1}
    assert _layers_with(p, "ffn_down", "Q5_K") == {0, 1}  # first sixteenth
    assert _layers_with(p, "ffn_down", "Q4_K") == set(range(2, N))  # non-Falcon: the rest Q4_K
    assert _layers_with(p, "attn_output", "Q4_K") == set(range(N))
    assert p["blk.5.attn_q.weight"] == "Q3_K" and p["output.weight"] == "Q6_K"
    q2 = gm.mix_plan("Q2_K", CFG)
    for t in ("attn_v", "ffn_down", "attn_output"):
        assert _layers_with(q2, t, "Q3_K") == set(range(N))
    assert q2["blk.3.ffn_up.weight"] == "Q2_K"
    # grouped-query attention: attn_v is n_gqa times smaller, so Q2_K can afford Q4_K there
    gqa = gm.ModelConfig(n_layers=32, dim=4096, ffn_dim=14336, vocab=128256, n_heads=32, n_kv_heads=8)
    assert gm.mix_plan("Q2_K", gqa)["blk.0.attn_v.weight"] == "Q4_K"


def test_tied_embeddings_and_row_fallbacks():
    smol = gm.ModelConfig(n_layers=30, dim=576, ffn_dim=1536, vocab=49152, n_heads=9, n_kv_heads=3,
                          tied_embeddings=True)
    p = gm.mix_plan("Q4_K_M", smol)
    assert "output.weight" not in p
    assert p["token_embd.weight"] == "Q8_0"  # is the LM head; 576 % 256 != 0 -> Q8_0
    assert p["blk.3.attn_q.weight"] == "Q5_0"  # Q4_K needs rows of 256k, 576 is not
    assert p["blk.0.ffn_down.weight"] == "Q6_K"  # 1536 = 6 * 256 fits Q6_K
    assert p["blk.4.ffn_down.weight"] == "Q4_K"
    assert gm.tensor_type("Q4_K_M", "blk.0.attn_v.weight", 0, 30, n_cols=576) == "Q8_0"  # Q6_K -> Q8_0
    assert gm.tensor_type("Q4_K_M", "blk.0.attn_q.weight", 0, 30, n_cols=100) == "F16"


def _bpw_by_hand(mix):
    """Average bits per weight from parameter counts and the type sizes in bytes per block."""
    d, f, v, n = CFG.dim, CFG.ffn_dim, CFG.vocab, CFG.n_layers
    bpw = {"F32": 32, "Q2_K": 84 * 8 / 256, "Q3_K": 110 * 8 / 256, "Q4_K": 144 * 8 / 256,
           "Q5_K": 176 * 8 / 256, "Q6_K": 210 * 8 / 256}
    more = len(MORE_BITS_32)
    base = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K"}[mix]
    bits = v * d * bpw[base] + v * d * bpw["Q6_K"] + (2 * n + 1) * d * 32  # embd, output, norms
    bits += n * 3 * d * d * bpw[base]  # q, k, output
    bits += (more * bpw["Q6_K"] + (n - more) * bpw[base]) * d * d  # v
    bits += n * 2 * d * f * bpw[base]  # gate, up
    bits += (more * bpw["Q6_K"] + (n - more) * bpw[base]) * d * f  # down
    params = 2 * v * d + (2 * n + 1) * d + n * (4 * d * d + 3 * d * f)
    return bits / params, params


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q5_K_M"])
def test_bpw_matches_hand_count(mix):
    want, params = _bpw_by_hand(mix)
    assert params == 6_738_415_616  # Llama-2-7B parameter count
    assert math.isclose(gm.mix_bpw(mix, CFG), want, rel_tol=1e-12)


# Llama-2-7B file sizes published in llama.cpp's quantize README (decimal GB), for the mixes
# whose rules have not changed since. A match within 0.01 GB checks the whole rule set.
PUBLISHED_7B_GB = {"Q3_K_M": 3.30, "Q4_K_S": 3.86, "Q4_K_M": 4.08, "Q5_K_M": 4.78}


@pytest.mark.parametrize("mix", list(PUBLISHED_7B_GB))
def test_file_size_matches_llama_cpp_table(mix):
    params = 6_738_415_616
    gb = gm.mix_bpw(mix, CFG) * params / 8 / 1e9
    assert abs(gb - PUBLISHED_7B_GB[mix]) < 0.01


def test_bpw_ordering_and_type_sizes():
    bpws = [gm.mix_bpw(m, CFG) for m in ("Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M")]
    assert bpws == sorted(bpws)
    assert gm.bits_per_weight("Q4_K") == 4.5 and gm.bits_per_weight("Q6_K") == 6.5625
    assert gm.bits_per_weight("Q8_0") == 8.5


def test_bad_input():
    with pytest.raises(ValueError, match="unknown mix 'Q4_K_L'"):
        gm.mix_plan("Q4_K_L", CFG)
    with pytest.raises(ValueError, match=r"layer_index must be in \[0, 32\)"):
        gm.tensor_type("Q4_K_M", "blk.40.attn_v.weight", 40, 32)
    with pytest.raises(ValueError, match="give its layer_index"):
        gm.tensor_type("Q4_K_M", "blk.4.ffn_down.weight", None, 32)
    with pytest.raises(ValueError, match="ModelConfig"):
        gm.mix_plan("Q4_K_M", {"n_layers": 32})
    with pytest.raises(ValueError, match="unknown ggml type"):
        gm.bits_per_weight("Q9_K")
