"""Keep torch's thread count when numba starts its thread pool.

numba's default threading layer on Linux is OpenMP, the same runtime torch's CPU operators use.
When numba launches its pool (at the first ``parallel=True`` kernel) it sets OpenMP's thread
count to ``numba.get_num_threads()`` for the whole process, so a ``torch.set_num_threads(1)``
made earlier is silently undone: every later torch operator that runs in parallel uses all
cores, and on a busy machine waits for the second thread (measured: a 5-microsecond
``repeat_interleave`` took 8 ms, and a SmolLM2 decode step 5x longer). :func:`launch` starts
numba's pool once, at import of the modules with parallel kernels, and puts torch's count back.
"""

from __future__ import annotations

import sys

_done = False


def launch() -> None:
    """Start numba's thread pool now (idempotent) and restore torch's thread count."""
    global _done
    if _done:
        return
    _done = True
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
    except Exception:  # noqa: BLE001 - an internal numba API; without it the pool starts lazily
        return
    if torch is not None:
        torch.set_num_threads(before)
