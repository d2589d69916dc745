"""qlearn.memory against hand derivations and independent sources (gguf's block table)."""

import pytest

from qlearn import memory as M


def test_q4_k_from_its_block_layout():
    # ggml block_q4_K: fp16 d + fp16 dmin (4 bytes) + scales[12] + qs[128] = 144 bytes / 256 weights
    assert M.FORMATS["Q4_K"].bytes_per_block == 2 + 2 + 12 + 128
    assert M.bits_per_weight("Q4_K") == 144 * 8 / 256 == 4.5


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                                  "Q5_K", "Q6_K"])
def test_gguf_layouts_match_the_gguf_package(name):
    gguf = pytest.importorskip("gguf")
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    lay = M.FORMATS[name]
    assert (lay.block, lay.bytes_per_block) == (block, type_size)


def test_nf4_with_and_without_double_quant():
    assert M.bits_per_weight("NF4") == 4 + 32 / 64
    assert M.bits_per_weight("NF4 + double quant") == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-12)
    assert M.bits_per_weight("INT4-g128 (symmetric)") == 4 + 16 / 128
    assert M.bits_per_weight("Q8_0") == 8.5 and M.bits_per_weight("Q4_0") == 4.5


def test_parameter_counts_from_configs():
    # published sizes: Llama-2-7B 6.74 B, Llama-3-8B 8.03 B, SmolLM2-135M 134.5 M
    assert M.MODELS["Llama-2-7B"].n_params / 1e9 == pytest.approx(6.74, abs=0.005)
    assert M.MODELS["Llama-3-8B"].n_params / 1e9 == pytest.approx(8.03, abs=0.005)
    assert M.MODELS["SmolLM2-135M"].n_params / 1e6 == pytest.approx(134.5, abs=0.05)
    assert M.MODELS["Llama-2-70B"].n_params / 1e9 == pytest.approx(69.0, abs=0.05)
    assert M.MODELS["Llama-3.1-405B"].n_params / 1e9 == pytest.approx(405.8, abs=0.1)
    # Llama-2-7B by hand: 2 x 32000 x 4096 (embed + lm_head) + 32 x (4 x 4096^2 + 3 x 4096 x 11008
    # + 2 x 4096) + 4096
    hand = 2 * 32000 * 4096 + 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    assert M.MODELS["Llama-2-7B"].n_params == hand


def test_kv_cache_of_llama_2_70b_by_hand():
    m = M.MODELS["Llama-2-70B"]
    # 80 layers x (K and V) x 8 KV heads x head_dim 8192/64 = 128 x 4096 tokens x 2 bytes = 1.25 GiB
    assert m.kv_cache_bytes(4096) == 80 * 2 * 8 * 128 * 4096 * 2 == 1.25 * 2 ** 30
    # the wrong formula (64 query heads as if they were KV heads) is 8x larger
    assert M.kv_cache_bytes(80, 64, 128, 4096) == 8 * m.kv_cache_bytes(4096)
    assert M.gib(m.kv_cache_bytes(131072)) == 40.0
    assert M.gb(m.kv_cache_bytes(131072)) == pytest.approx(42.95, abs=0.01)


def test_units_and_fit():
    assert M.gib(2 ** 30) == 1 and M.gb(10 ** 9) == 1
    # Llama-2-7B in FP16 = 13.48 GB = 12.55 GiB: fits 24 GiB with a 4K context, FP32 does not
    assert M.gb(M.weight_memory_bytes(M.MODELS["Llama-2-7B"].n_params, "FP16")) == pytest.approx(13.48, abs=0.01)
    assert M.fits_on_gpu("Llama-2-7B", "FP16", 24) and not M.fits_on_gpu("Llama-2-7B", "FP32", 24)
    ctx = M.max_context_that_fits("Llama-2-7B", "FP16", 24)
    free = 24 * 2 ** 30 - 6738415616 * 2
    assert ctx == free // (2 * 32 * 32 * 128 * 2)  # 512 KiB of KV cache per token
    assert M.max_context_that_fits("Llama-2-70B", "FP16", 80) == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown format"):
        M.bits_per_weight("Q4_X")
    with pytest.raises(ValueError, match="unknown model"):
        M.fits_on_gpu("GPT-5", "FP16", 80)
    with pytest.raises(ValueError, match="context must be a positive integer"):
        M.kv_cache_bytes(80, 8, 128, 0)
    with pytest.raises(ValueError, match="bytes_per_element"):
        M.kv_cache_bytes(80, 8, 128, 10, bytes_per_element=0)
    with pytest.raises(ValueError, match="n_params"):
        M.weight_memory_bytes(-1, "FP16")
