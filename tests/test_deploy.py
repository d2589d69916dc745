"""qlearn.deploy: recommendations from memory arithmetic + the measured table, and the table itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from qlearn import deploy, memory

ROOT = Path(__file__).resolve().parents[1]
RERUN_ROWS = ("Q8_0", "rtn4")  # two rows of the committed table, recomputed from scratch


def test_recommend_ranks_what_fits():
    opts = deploy.recommend("Llama-2-13B", 24, 4096)
    assert opts and all(o.fits for o in opts)
    measured = [o.ppl_increase_pct for o in opts if o.ppl_increase_pct is not None]
    assert measured == sorted(measured)
    for o in opts:
        assert o.total_bytes == pytest.approx(o.weight_bytes + o.kv_bytes + deploy.DEFAULT_RESERVE_GIB * 2**30)
        assert o.total_bytes <= 24 * 2**30
    kv = memory.MODELS["Llama-2-13B"].kv_cache_bytes(4096)
    assert opts[0].kv_bytes == kv
    everything = deploy.recommend("Llama-2-13B", 24, 4096, include_unfit=True)
    assert len(everything) > len(opts) and not all(o.fits for o in everything)
    assert deploy.recommend("Llama-2-70B", 8, 4096) == []  # nothing fits
    # a bare parameter count borrows the shapes of the closest published model
    by_count = deploy.recommend(13e9, 24, 4096)
    assert {o.name for o in by_count} <= {o.name for o in everything}


def test_recommend_bad_input():
    with pytest.raises(ValueError, match="unknown model"):
        deploy.recommend("Llama-9-1T", 24, 4096)
    with pytest.raises(TypeError, match="parameter count"):
        deploy.recommend(-5, 24, 4096)
    with pytest.raises(ValueError, match="memory_gib"):
        deploy.recommend("Llama-2-7B", 0, 4096)
    with pytest.raises(ValueError, match="context must be a positive integer"):
        deploy.recommend("Llama-2-7B", 24, 0)


def test_table_protocol_and_rows():
    table = deploy.quality_table()
    assert "command" in table["protocol"] and "perplexity" in table["protocol"]
    rows = table["rows"]
    assert rows["baseline"]["ppl"] > 1
    assert set(deploy.missing_rows(table)).isdisjoint(rows)
    for rid, r in rows.items():
        assert r["ppl"] >= 1 and r["bpw"] > 0, rid


def _benchmark():
    spec = importlib.util.spec_from_file_location("quality_table", ROOT / "benchmarks" / "quality_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_two_rows_of_the_table_reproduce(tmp_path):
    from qlearn.models import load

    bench = _benchmark()
    stored = deploy.quality_table()["rows"]
    threads = torch.get_num_threads()
    torch.set_num_threads(deploy.quality_table()["protocol"]["threads"])
    try:
        model, tok = load("smollm2-135m")
        val_text, calib_ids = bench._texts(tok)
        for rid in RERUN_ROWS:
            row = bench.run_row(bench.row_specs()[rid], model, tok, val_text, calib_ids, None, tmp_path)
            assert row["ppl"] == pytest.approx(stored[rid]["ppl"], rel=1e-5), rid
            assert row["bpw"] == pytest.approx(stored[rid]["bpw"], rel=1e-12), rid
    finally:
        torch.set_num_threads(threads)
