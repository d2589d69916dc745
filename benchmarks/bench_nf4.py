"""Throughput of qlearn.nf4 quantize_4bit / dequantize_4bit on a 4096x4096 float32 matrix.

Prints our time and throughput and, when bitsandbytes is installed, its CPU functions' time and
the ratio (bitsandbytes time / ours; > 1 means we are faster). Median of ``--repeat`` runs after
one warm-up call. Numba threads are reported (set NUMBA_NUM_THREADS to change them); bitsandbytes'
quantize runs torch ops on torch's intra-op threads, also reported.

    PYTHONPATH=. python benchmarks/bench_nf4.py [--repeat 5] [--blocksize 64] [--double-quant]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch

from qlearn import nf4

SHAPE = (4096, 4096)  # a typical 7B-model projection matrix


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: numba compilation / caches / torch.compile
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--quant-type", default="nf4", choices=nf4.QUANT_TYPES)
    ap.add_argument("--double-quant", action="store_true")
    args = ap.parse_args()

    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    xt = torch.from_numpy(x)
    kw = dict(blocksize=args.blocksize, quant_type=args.quant_type,
              compress_statistics=args.double_quant)
    packed, state = nf4.quantize_4bit(x, **kw)
    mb = x.nbytes / 1e6

    rows = [("quantize_4bit", median_seconds(lambda: nf4.quantize_4bit(x, **kw), args.repeat)),
            ("dequantize_4bit", median_seconds(lambda: nf4.dequantize_4bit(packed, state),
                                               args.repeat))]
    buf = np.empty(x.size, np.float32)
    rows.append(("dequantize out=", median_seconds(lambda: nf4.dequantize_4bit(packed, state, out=buf),
                                                   args.repeat)))
    try:
        import bitsandbytes.functional as F
    except ImportError:
        F = None
    bnb = {}
    if F is not None:
        pb, sb = F.quantize_4bit(xt, **kw)
        bnb["quantize_4bit"] = median_seconds(lambda: F.quantize_4bit(xt, **kw), args.repeat)
        bnb["dequantize_4bit"] = median_seconds(lambda: F.dequantize_4bit(pb, sb), args.repeat)
        bnb["dequantize out="] = bnb["dequantize_4bit"]   # bitsandbytes' CPU path always allocates

    print(f"{args.quant_type} blocksize {args.blocksize} double_quant={args.double_quant}, "
          f"{SHAPE[0]}x{SHAPE[1]} float32 ({mb:.0f} MB), median of {args.repeat}")
    print(f"numba threads {numba.get_num_threads()} (layer {numba.threading_layer()}), "
          f"torch threads {torch.get_num_threads()}, "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    head = f"{'op':<16}{'qlearn ms':>11}{'MB/s (f32)':>12}"
    print(head + (f"{'bnb ms':>10}{'bnb/qlearn':>12}" if bnb else "   (bitsandbytes not installed)"))
    for name, t in rows:
        line = f"{name:<16}{t * 1e3:>11.1f}{mb / t:>12.0f}"
        if bnb:
            line += f"{bnb[name] * 1e3:>10.1f}{bnb[name] / t:>11.1f}x"
        print(line)
    fresh = median_seconds(lambda: np.empty(x.size, np.float32).fill(0), args.repeat)
    print(f"floor: allocating and writing a fresh {SHAPE[0]}x{SHAPE[1]} float32 array takes "
          f"{fresh * 1e3:.1f} ms (page faults), the lower bound of any dequantize that returns new memory")


if __name__ == "__main__":
    main()
