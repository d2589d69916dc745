"""Numba kernels for qlearn.kquants quantizers (filled in type by type)."""
_KERNELS: dict = {}


def supports(name: str) -> bool:
    return name in _KERNELS


def quantize(x, t, imatrix, ref: bool):
    return _KERNELS[t.name](x, imatrix, ref)
