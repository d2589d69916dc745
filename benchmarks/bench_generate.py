"""Greedy generation on SmolLM2-135M with and without the KV cache, in one run.

A ``PROMPT_TOKENS``-token prompt from the held-out text, then ``NEW_TOKENS`` new tokens
(``stop_at_eos=False``), with ``ctx`` large enough that the window never slides:

* recomputed: ``generate(..., cache=False)``, every step runs the whole prefix (quadratic work);
* cached: ``generate(..., cache=True)``, one prefill then one single-position forward per token;
* cached with quantized caches (``--formats``): the same, the cache stored in those formats and
  dequantized at every step.

Prints wall and CPU seconds, tokens/s and the speed-up, and checks that cached and recomputed
greedy tokens are the same. Run: ``PYTHONPATH=. python benchmarks/bench_generate.py``.
"""

from __future__ import annotations

import argparse
import time

import torch

PROMPT_TOKENS = 512
NEW_TOKENS = 128


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv=None) -> int:
    from qlearn import kvcache
    from qlearn.models import generate, load, validation_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=NEW_TOKENS)
    ap.add_argument("--prompt", type=int, default=PROMPT_TOKENS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formats", nargs="*", default=["q8_0", "q4_0"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load("smollm2-135m")
    prompt = tok.decode(tok.encode(validation_text())[:args.prompt])
    ctx = args.prompt + args.new + 8

    def run(m, cache):
        return generate(m, tok, prompt, args.new, ctx=ctx, cache=cache, stop_at_eos=False)

    run(model, True)                                        # warm-up (allocations, kernels)
    cached, w_c, c_c = timed(lambda: run(model, True))
    recomputed, w_r, c_r = timed(lambda: run(model, False))
    print(f"SmolLM2-135M, {args.prompt}-token prompt, {args.new} new tokens, "
          f"{args.threads} torch threads")
    print(f"{'setting':<22}{'wall s':>9}{'cpu s':>9}{'tok/s':>8}")
    print(f"{'recomputed':<22}{w_r:9.2f}{c_r:9.2f}{args.new / w_r:8.2f}")
    print(f"{'cached f32':<22}{w_c:9.2f}{c_c:9.2f}{args.new / w_c:8.2f}")
    for f in args.formats:
        qm = kvcache.with_kv_cache(model, f, f)
        _, w, c = timed(lambda: run(qm, True))
        print(f"{'cached ' + f:<22}{w:9.2f}{c:9.2f}{args.new / w:8.2f}")
    print(f"speed-up cached / recomputed: {w_r / w_c:.1f}x wall, {c_r / c_c:.1f}x cpu")
    print(f"same greedy tokens: {cached == recomputed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
