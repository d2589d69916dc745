"""Exercises of chapter 13, running quantized models on a CPU. Each check runs the student's code
on fresh inputs and compares it with qlearn.kernels and qlearn.kquants."""
from __future__ import annotations

import numpy as np

from qlearn import kernels
from qlearn import kquants as K
from qlearn.exercises import Mismatch, call_student, exercise

DOT_RTOL = 1e-6  # the answer is a float; the reference sums in float64


def _rng():
    return np.random.default_rng()


def _q8_0_dot_reference(wblock: np.ndarray, xblock: np.ndarray) -> float:
    """d_w * d_x * sum(q_w * q_x) for two Q8_0 blocks (34 bytes each), in float64."""
    dw = float(wblock[0:2].view("<f2")[0])
    dx = float(xblock[0:2].view("<f2")[0])
    qw = wblock[2:34].view(np.int8).astype(np.int64)
    qx = xblock[2:34].view(np.int8).astype(np.int64)
    return dw * dx * float(np.sum(qw * qx))


@exercise("ch13.q8_0_dot", hint="each block is an fp16 scale (bytes 0:2, view as '<f2') and 32 int8 "
                                "codes (bytes 2:34, view as int8); sum the products of the codes as "
                                "integers, then multiply by both scales once")
def q8_0_dot(fn):
    """fn(wblock: (34,) uint8, xblock: (34,) uint8) -> float: the dot product of two Q8_0 blocks."""
    rng = _rng()
    for _ in range(5):
        w = (rng.standard_normal((1, 32)) * rng.uniform(0.01, 3)).astype(np.float32)
        x = (rng.standard_normal((1, 32)) * rng.uniform(0.01, 30)).astype(np.float32)
        wb, xb = K.quantize(w, "Q8_0")[0], K.quantize(x, "Q8_0")[0]
        got = call_student(fn, wb.copy(), xb.copy(), what="q8_0_dot(wblock, xblock)")
        exp = _q8_0_dot_reference(wb, xb)
        try:
            g = float(got)
        except (TypeError, ValueError):
            raise Mismatch("q8_0_dot must return a number", exp, got) from None
        if not abs(g - exp) <= DOT_RTOL * (abs(exp) + 1e-12) + 1e-9:
            raise Mismatch("q8_0_dot(wblock, xblock)", exp, g)


def _random_mix(rng):
    shapes = {f"w{i}": (int(rng.integers(1, 64)) * 32, int(rng.choice([256, 512, 768]))) for i in range(6)}
    types = ["Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_0", "F32", "F16"]
    plan = {k: str(rng.choice(types)) for k in shapes}
    return shapes, plan


def _bytes_of(shapes, plan) -> int:
    total = 0
    for name, (rows, cols) in shapes.items():
        t = plan[name]
        if t in ("F32", "F16"):
            total += rows * cols * (4 if t == "F32" else 2)
        else:
            bs, ts = kernels.block_info(t)
            total += rows * (cols // bs) * ts
    return total


@exercise("ch13.bytes_per_token", hint="a (rows, cols) tensor of a block type holds rows * cols / block_size "
                                       "blocks of type_size bytes (kernels.block_info gives both); F32 is 4 "
                                       "bytes per weight, F16 2; decoding one token reads every weight once")
def bytes_per_token(fn):
    """fn(shapes: {name: (rows, cols)}, plan: {name: type}) -> int: weight bytes read per token."""
    rng = _rng()
    for _ in range(4):
        shapes, plan = _random_mix(rng)
        got = call_student(fn, dict(shapes), dict(plan), what="bytes_per_token(shapes, plan)")
        exp = _bytes_of(shapes, plan)
        try:
            ok = int(got) == exp and float(got) == exp
        except (TypeError, ValueError):
            raise Mismatch("bytes_per_token must return an integer", exp, got) from None
        if not ok:
            raise Mismatch(f"bytes_per_token for plan {plan}", exp, got)


@exercise("ch13.decode_ceiling", hint="decoding one token reads every weight byte once: at B GB/s the "
                                      "fastest possible rate is B * 1e9 / bytes_per_token tokens per second")
def decode_ceiling(fn):
    """fn(bytes_per_token: int, bandwidth_gbs: float) -> float: the memory-bound tokens/s ceiling."""
    rng = _rng()
    for _ in range(4):
        b = int(rng.integers(10 ** 6, 10 ** 10))
        bw = float(rng.uniform(5, 200))
        got = call_student(fn, b, bw, what="decode_ceiling(bytes_per_token, bandwidth_gbs)")
        exp = bw * 1e9 / b
        try:
            ok = abs(float(got) - exp) <= 1e-9 * exp
        except (TypeError, ValueError):
            raise Mismatch("decode_ceiling must return a number", exp, got) from None
        if not ok:
            raise Mismatch(f"decode_ceiling({b}, {bw:.3f})", exp, got)
