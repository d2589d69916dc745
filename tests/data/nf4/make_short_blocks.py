"""Regenerate short_blocks.npz: bitsandbytes' own output where the last block is shorter.

The shared oracle only has sizes that are multiples of every block size. This script records
bitsandbytes 0.50.2 (CPU) on sizes that are not, with and without double quantization (so the
last nested block of 256 absmax values is short too). Run with bitsandbytes installed:

    python tests/data/nf4/make_short_blocks.py
"""

from pathlib import Path

import numpy as np
import torch
import bitsandbytes
import bitsandbytes.functional as F

CASES = [  # (name, n, blocksize, quant_type, compress_statistics, tail)
    ("nf4_bs64_rem40", 64 * 15 + 40, 64, "nf4", False, "gauss"),
    ("fp4_bs256_rem2", 256 * 3 + 2, 256, "fp4", False, "gauss"),
    ("nf4_bs64_zero_tail", 64 * 4 + 30, 64, "nf4", False, "zeros"),
    ("nf4_bs32_subnormal_tail", 32 * 5 + 6, 32, "nf4", False, "subnormal"),
    ("nf4_bs64_dq_rem", 64 * 300 + 10, 64, "nf4", True, "gauss"),
    ("fp4_bs32_dq_rem", 32 * 700 + 22, 32, "fp4", True, "gauss"),
    ("nf4_bs4096_dq_short", 4096 * 2 + 500, 4096, "nf4", True, "gauss"),
]


def main():
    rng = np.random.default_rng(6006)
    out = {"bitsandbytes_version": np.array(bitsandbytes.__version__),
           "names": np.array([c[0] for c in CASES])}
    for name, n, bs, qt, dq, tail in CASES:
        x = rng.standard_normal(n).astype(np.float32)
        rem = n % bs
        if tail == "zeros":
            x[n - rem:] = 0
        elif tail == "subnormal":
            x[n - rem:] = np.float32(1e-39) * rng.standard_normal(rem).astype(np.float32)
        packed, st = F.quantize_4bit(torch.from_numpy(x), blocksize=bs, quant_type=qt,
                                     compress_statistics=dq)
        y = F.dequantize_4bit(packed, st)
        out[f"{name}__x"] = x
        out[f"{name}__meta"] = np.array([bs, int(dq)])
        out[f"{name}__qt"] = np.array(qt)
        out[f"{name}__packed"] = packed.reshape(-1).numpy()
        out[f"{name}__absmax"] = st.absmax.numpy()
        out[f"{name}__dq"] = y.numpy()
        if dq:
            out[f"{name}__nested_absmax"] = st.state2.absmax.numpy()
            out[f"{name}__offset"] = np.float32(st.offset.item())
    np.savez_compressed(Path(__file__).with_name("short_blocks.npz"), **out)


if __name__ == "__main__":
    main()
