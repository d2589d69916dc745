"""Benchmark qlearn's GGUF kernels on a 4096 x 4096 float32 matrix.

Prints, in one run:
- dequantize (Q4_K, Q6_K, Q8_0): our numba kernel vs ``gguf.quants.dequantize`` (numpy), in
  GB/s of float32 output and as a ratio; single-threaded with a fresh output array (the same
  work gguf-py does), single-threaded into a reused ``out=`` buffer, and on all numba threads;
- quantize (Q4_K, Q6_K, Q8_0) with ``qlearn.kquants.quantize`` in Melem/s, if available;
- fused matvec ``y = W_q @ x`` (Q4_K, Q6_K, Q8_0, q8 and f32 activations) vs a float32
  ``torch`` matvec on the dequantized matrix, both single-threaded.

Every figure is the median of ``--repeats`` timed calls after a warm-up call.
Run: ``PYTHONPATH=. python benchmarks/bench_kquants.py``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time

import numba
import numpy as np
import torch

import gguf
from qlearn import kernels

TYPES = ("Q4_K", "Q6_K", "Q8_0")
FP16_FIELDS = {"Q4_K": (0, 2), "Q6_K": (208,), "Q8_0": (0,)}  # byte offsets of fp16 scales


MATVEC_TARGETS = {"Q4_K": 4.0, "Q6_K": 2.0, "Q8_0": 3.0}  # issue #14: ratio to torch float32 matvec
BEST = {}  # label -> fastest call in seconds, printed at the end (what a quiet core does)


def median_time(fn, repeats: int, label: str | None = None) -> float:
    """Median wall time of fn() in seconds over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if label:
        BEST[label] = min(times)
    return float(np.median(times))


def cpu_simd_flags() -> str:
    """The vector-instruction flags of this CPU that matter to these kernels (Linux only)."""
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(w for w in wanted if w in flags) or "none of " + " ".join(wanted)


def median_cpu_time(fn, repeats: int) -> float:
    """Median CPU time (this process) of fn() in seconds over `repeats` calls, after a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def synthetic_blocks(rng, qtype: str, rows: int, cols: int) -> np.ndarray:
    """Valid random blocks: random code bytes, fp16 scales around 0.01 (timing only)."""
    bs, ts = kernels.block_info(qtype)
    q = rng.integers(0, 256, (rows, cols // bs, ts), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        d = (rng.uniform(0.5, 1.5, (rows, cols // bs)) * 0.01).astype(np.float16)
        q[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, cols // bs, 2)
    return q.reshape(rows, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="rows = cols of the matrix")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the matvec ratios")
    ap.add_argument("--matvec-only", action="store_true", help="skip the dequantize/quantize sections")
    ap.add_argument("--gguf-repeats", type=int, default=3, help="repeats for the slow gguf-py calls")
    args = ap.parse_args()
    n = args.size
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads for parallel runs), "
          f"torch {torch.__version__} (1 thread), gguf-py {importlib.metadata.version('gguf')}")
    print(f"CPU SIMD flags: {cpu_simd_flags()}")
    print(f"matrix {n} x {n} float32 = {n * n * 4 / 1e6:.0f} MB; median of {args.repeats} calls")

    rng = np.random.default_rng(0)
    W = rng.standard_normal((n, n), dtype=np.float32)
    x = rng.standard_normal(n, dtype=np.float32)
    try:
        from qlearn import kquants
    except ImportError:
        kquants = None

    q = {}
    for t in TYPES:
        if kquants is not None:
            q[t], src = kquants.quantize(W, t), "qlearn.kquants.quantize"
        elif t == "Q8_0":
            q[t], src = gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q8_0), "gguf.quants.quantize"
        else:
            q[t], src = synthetic_blocks(rng, t, n, n), "synthetic random blocks"
        print(f"  {t} input bytes: {src}")

    if not args.matvec_only:
        dequantize_and_quantize_sections(args, q, W, kquants)
    matvec_section(args, q, x)
    print("\n== fastest single call (the machine is shared: medians include waits for a core) ==")
    for label, best in BEST.items():
        print(f"{label}: {best * 1e3:.2f} ms")


def dequantize_and_quantize_sections(args, q, W, kquants) -> None:
    n = args.size
    print("\n== dequantize ==")
    out = np.empty((n, n), dtype=np.float32)
    gbs = lambda s: n * n * 4 / s / 1e9  # noqa: E731  (GB/s of float32 output)
    for t in TYPES:
        gt = gguf.GGMLQuantizationType[t]
        t_g = median_time(lambda: gguf.quants.dequantize(q[t], gt), args.gguf_repeats)
        t_1 = median_time(lambda: kernels.dequantize(q[t], t, parallel=False), args.repeats)
        t_1o = median_time(lambda: kernels.dequantize(q[t], t, parallel=False, out=out), args.repeats,
                           f"dequantize {t}, 1 thread, out=")
        t_p = median_time(lambda: kernels.dequantize(q[t], t), args.repeats)
        t_po = median_time(lambda: kernels.dequantize(q[t], t, out=out), args.repeats)
        print(f"{t}: gguf-py {t_g * 1e3:7.1f} ms ({gbs(t_g):5.2f} GB/s) | ours 1 thread {t_1 * 1e3:6.2f} ms "
              f"({gbs(t_1):5.2f} GB/s, {t_g / t_1:4.1f}x) | 1 thread out= {t_1o * 1e3:6.2f} ms "
              f"({gbs(t_1o):5.2f} GB/s, {t_g / t_1o:4.1f}x) | {numba.get_num_threads()} threads "
              f"{t_p * 1e3:6.2f} ms ({t_g / t_p:4.1f}x), out= {t_po * 1e3:6.2f} ms ({t_g / t_po:4.1f}x)")
    print(f"(numba threading layer: {numba.threading_layer()}; parallel timings suffer when other "
          "processes share the cores)")
    t_floor = median_time(lambda: np.empty((n, n), np.float32).fill(1.0), args.repeats)
    print(f"floor: allocating and writing a fresh {n}x{n} float32 array takes {t_floor * 1e3:.2f} ms "
          f"(page faults); writing into an existing one "
          f"{median_time(lambda: out.fill(1.0), args.repeats) * 1e3:.2f} ms")

    print("\n== quantize (single thread) ==")
    if kquants is None:
        print("kquants not available")
    else:
        rows = max(1, n // 4)  # a quarter of the matrix keeps this section short
        for t in TYPES:
            s = median_time(lambda: kquants.quantize(W[:rows], t), max(1, args.repeats // 2))
            print(f"{t}: {rows * n / s / 1e6:7.1f} Melem/s ({rows} x {n} in {s * 1e3:.1f} ms)")



def matvec_section(args, q, x) -> None:
    n = args.size
    info = kernels.backend_info()
    print("\n== fused matvec y = W_q @ x: ratios to a torch float32 matvec in the same run ==")
    print(f"default backend: {info['backend']} "
          + (f"({info['simd']}, {info['compiler']} {info['flags']})" if info["backend"] == "c"
             else f"({info['reason']})"))
    print("CPU time of this process (time.process_time) per call, medians of "
          f"{3 * args.repeats} calls; {args.rounds} rounds interleave torch and the kernels so "
          "that load from other processes hits both alike")
    backends = ["c", "numba"] if info["backend"] == "c" else ["numba"]
    Wt = torch.from_numpy(kernels.dequantize(q["Q4_K"], "Q4_K"))
    xt = torch.from_numpy(x)
    ratios = {(t, b): [] for t in MATVEC_TARGETS for b in backends}
    for rnd in range(args.rounds):
        t_torch = median_cpu_time(lambda: Wt @ xt, 3 * args.repeats)
        line = [f"round {rnd + 1}: torch f32 {t_torch * 1e3:5.2f} ms"]
        for t in MATVEC_TARGETS:
            for b in backends:
                s = median_cpu_time(lambda: kernels.matvec(q[t], t, x, backend=b), 3 * args.repeats)
                ratios[t, b].append(t_torch / s)
                line.append(f"{t} {b} {s * 1e3:5.2f} ms {t_torch / s:4.2f}x")
        print(" | ".join(line[:1 + len(backends)]))
        for k in range(1 + len(backends), len(line), len(backends)):
            print("         " + " | ".join(line[k:k + len(backends)]))
    print("median ratio over rounds (target):")
    for t, target in MATVEC_TARGETS.items():
        for b in backends:
            r = float(np.median(ratios[t, b]))
            ok = "met" if r >= target else "NOT met"
            print(f"  {t} {b:<5}: {r:4.2f}x torch float32 ({q[t].nbytes / 1e6:5.1f} MB read vs "
                  f"{n * n * 4 / 1e6:.0f} MB), target >= {target}x: {ok}")
    for t in MATVEC_TARGETS:
        s = median_time(lambda: kernels.matvec(q[t], t, x, activations="f32", parallel=False),
                        3 * args.repeats, f"matvec {t} f32")
        print(f"{t} f32 activations (dequantized tiles + BLAS): {s * 1e3:6.2f} ms wall")
    threads = numba.get_num_threads()
    print(f"\n== threads: matvec with rows split over {threads} threads (parallel=True) vs 1, "
          "wall time ==")
    for t in MATVEC_TARGETS:
        for b in backends:
            s1 = median_time(lambda: kernels.matvec(q[t], t, x, backend=b), 3 * args.repeats)
            sp = median_time(lambda: kernels.matvec(q[t], t, x, backend=b, parallel=True),
                             3 * args.repeats)
            print(f"{t} {b:<5}: 1 thread {s1 * 1e3:6.3f} ms, {threads} threads {sp * 1e3:6.3f} ms, "
                  f"speed-up {s1 / sp:4.2f}x")
    print("(wall time: a speed-up near the thread count needs that many idle cores; "
          f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
