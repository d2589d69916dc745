"""Block-wise QAT on SmolLM2-135M at 3 bits, against RTN, GPTQ and AWQ on the same protocol.

Each decoder block's linears get learned step sizes (LSQ) on qlearn's 3-bit symmetric grid, one
step per group of ``--group-size`` inputs, and the block's weights and steps are trained to
reproduce its full-precision outputs on cached hidden states (EfficientQAT's Block-AP, OmniQuant);
the next block is then fed the quantized block's outputs (``qlearn.qat.blockwise_qat``).

Groups of 128 (the usual setting) do not divide SmolLM2's width of 576, so the default is 64.

Protocol: calibration/training windows from the Shakespeare training split (never the held-out
plays); perplexity on the first ``--eval-tokens`` tokens of the held-out text in disjoint
windows of ``--ctx`` tokens. Baselines on the same tokens: RTN on the same 3-bit grid, RTN on
the asymmetric grid (8 levels), GPTQ (asymmetric, act-order off) and AWQ (its own min-max grid).

    PYTHONPATH=. python benchmarks/qat_smollm2.py                 # the full run (all 30 blocks)
    PYTHONPATH=. python benchmarks/qat_smollm2.py --layers 1 --samples 4 --seq 64 --epochs 1 \\
        --eval-tokens 512 --no-baselines                          # one block, a smoke run

Cost: the target is 30 minutes on 2 cores; not yet measured end to end on a quiet machine (on
a heavily shared one, block 0 of the default run took 210 s of wall time).

Prints one line per block (output MSE before and after training, seconds) and a table of
perplexities with wall and CPU seconds per method; ``--json PATH`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from qlearn import adapters, awq, gptq, models, qat, uniform
from qlearn.models import data


def calibration_windows(tok, n_samples: int, seq: int, seed: int = 0) -> torch.Tensor:
    """(n_samples, seq) int64 windows drawn at random from the training split (seeded)."""
    train_text, _ = data.train_validation_split()
    ids = torch.tensor(tok.encode(train_text[: max(200_000, 8 * n_samples * seq)]))
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq - 1, (n_samples,), generator=g)
    return torch.stack([ids[s:s + seq] for s in starts.tolist()])


def run(model_name: str = "smollm2-135m", bits: int = 3, group_size: int = 64,
        samples: int = 32, seq: int = 256, epochs: int = 2, layers: int | None = None,
        eval_tokens: int = 4096, ctx: int = 512, baselines: bool = True, threads: int = 2,
        lr_weight: float = 1e-5, lr_step: float = 1e-4, progress: bool = True) -> dict:
    """The benchmark as a function (the test calls it with one block). Returns a dict of
    perplexities, seconds and the per-block report."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, tok = models.load(model_name)
    eval_ids = tok.encode(models.validation_text())[:eval_tokens]
    calib = calibration_windows(tok, samples, seq)

    def ppl(m):
        return models.perplexity(m, tok, eval_ids, ctx=ctx)

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t0, time.process_time() - c0

    rows = {"fp32": (ppl(model), 0.0, 0.0)}
    (q, report), wall, cpu = timed(lambda: qat.blockwise_qat(
        model, calib, bits, group_size, "lsq", "symmetric", epochs, 4, lr_weight, lr_step,
        layers, progress=progress))
    rows["block-wise QAT (LSQ, symmetric)"] = (ppl(q), wall, cpu)
    names = list(adapters.find_linears(model))[: None if layers is None else 7 * layers]

    def rtn(mapping):
        return adapters.fake_quantize_linears(model, lambda w: uniform.fake_quantize(
            w, bits, block_size=(1, group_size), mapping=mapping), names)

    rtn_sym, wall, cpu = timed(lambda: rtn("symmetric"))
    rows["RTN symmetric (same grid)"] = (ppl(rtn_sym), wall, cpu)
    if baselines:
        rtn_asym, wall, cpu = timed(lambda: rtn("asymmetric"))
        rows["RTN asymmetric"] = (ppl(rtn_asym), wall, cpu)
        (g_model, _), wall, cpu = timed(lambda: gptq.gptq_model(
            model, calib, bits=bits, group_size=group_size, sym=False, progress=False))
        rows["GPTQ asymmetric"] = (ppl(g_model), wall, cpu)
        (a_model, _), wall, cpu = timed(lambda: awq.awq_model(
            model, calib, bits=bits, group_size=group_size, progress=False))
        rows["AWQ"] = (ppl(a_model), wall, cpu)
    return {"model": model_name, "bits": bits, "group_size": group_size, "samples": samples,
            "seq": seq, "epochs": epochs, "layers": layers, "eval_tokens": len(eval_ids),
            "ctx": ctx, "threads": threads,
            "rows": {k: {"perplexity": p, "wall_s": w, "cpu_s": c} for k, (p, w, c) in rows.items()},
            "blocks": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--layers", type=int, default=None, help="train only the first N blocks")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baselines", action="store_true", help="skip RTN-asym, GPTQ and AWQ")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args()
    t0 = time.perf_counter()
    res = run(a.model, a.bits, a.group_size, a.samples, a.seq, a.epochs, a.layers,
              a.eval_tokens, a.ctx, not a.no_baselines, a.threads)
    print(f"\n{a.model}, {a.bits}-bit groups of {a.group_size}; perplexity on "
          f"{res['eval_tokens']} held-out tokens, ctx {a.ctx}")
    print(f"{'method':34s}{'perplexity':>11s}{'wall s':>9s}{'CPU s':>9s}")
    for k, r in res["rows"].items():
        print(f"{k:34s}{r['perplexity']:11.2f}{r['wall_s']:9.1f}{r['cpu_s']:9.1f}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
