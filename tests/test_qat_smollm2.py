"""Block-wise QAT (qlearn.qat.blockwise_qat) and a one-block run of benchmarks/qat_smollm2.py."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from qlearn import adapters, qat
from qlearn.models import LlamaConfig, LlamaModel

ROOT = Path(__file__).resolve().parents[1]
SMALL = LlamaConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                    max_seq_len=32)


def test_one_block_lowers_its_output_error_and_converts_only_that_block():
    torch.manual_seed(0)
    model = LlamaModel(SMALL).init_weights(0).eval()
    tokens = torch.randint(0, SMALL.vocab_size, (8, 32))
    q, report = qat.blockwise_qat(model, tokens, bits=2, group_size=32, epochs=3, batch=4,
                                  lr_weight=1e-3, lr_step=1e-3, max_layers=1)
    assert len(report) == 1 and report[0]["layer"] == 0
    assert report[0]["mse_qat"] < report[0]["mse_rtn"]
    lin = adapters.find_linears(q)
    assert all(isinstance(lin[f"layers.0.{s}"], qat.QuantizedLinear) for s in adapters.LAYER_LINEARS)
    assert all(isinstance(lin[f"layers.1.{s}"], torch.nn.Linear) for s in adapters.LAYER_LINEARS)
    assert all(isinstance(m, torch.nn.Linear) for m in adapters.find_linears(model).values())


def test_blockwise_bad_inputs():
    model = LlamaModel(SMALL).init_weights(0)
    with pytest.raises(ValueError, match="n_samples, seq"):
        qat.blockwise_qat(model, torch.ones(5).long())
    with pytest.raises(ValueError, match="epochs"):
        qat.blockwise_qat(model, torch.ones(2, 4).long(), group_size=32, epochs=0)


def _benchmark():
    spec = importlib.util.spec_from_file_location("qat_smollm2", ROOT / "benchmarks" / "qat_smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_one_block_on_smollm2():
    bench = _benchmark()
    try:
        res = bench.run(samples=4, seq=64, epochs=1, layers=1, eval_tokens=256, ctx=128,
                        baselines=False, threads=1, progress=False)
    except RuntimeError as e:  # qlearn.models.data: the wheel could not be downloaded
        pytest.skip(f"SmolLM2-135M not available: {e}")
    block = res["blocks"][0]
    assert block["mse_qat"] < block["mse_rtn"]
    rows = res["rows"]
    assert set(rows) == {"fp32", "block-wise QAT (LSQ, symmetric)", "RTN symmetric (same grid)"}
    assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows.values())
