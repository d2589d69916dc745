"""The one table of storage block types and their bits per weight.

Every fact "type T stores ``block_size`` weights in ``type_size`` bytes" lives here, field by
field, and :mod:`qlearn.memory`, :mod:`qlearn.kernels`, :mod:`qlearn.gguf_mixes`,
:mod:`qlearn.kquants` and :mod:`qlearn.nf4` read it. The GGUF block layouts follow ggml's
``ggml-common.h`` (``block_q4_0`` ... ``block_iq4_xs``); a test checks every entry against the
``gguf`` package's ``GGML_QUANT_SIZES`` (the format's own registry).

* :data:`GGUF_TYPES`: name -> :class:`BlockType` for the quantized GGUF types qlearn handles.
* :data:`PLAIN_TYPES`: unquantized GGUF types (F32, F16, BF16, F64, I8..I64), one value per
  weight.
* :func:`nf4_type`: bitsandbytes' NF4/FP4 block (optionally with double quantization).
* :data:`IQ4_LEVELS`: the 16 non-uniform levels of IQ4_NL / IQ4_XS (ggml's ``kvalues_iq4nl``).
* :func:`get` / :func:`bits_per_weight`: look-ups with a clear error for unknown names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlearn import validate

__all__ = ["Field", "BlockType", "GGUF_TYPES", "PLAIN_TYPES", "IQ4_LEVELS", "QK_K", "QK",
           "get", "bits_per_weight", "block_info", "nf4_type"]

BITS_PER_BYTE = 8
QK = 32       # weights per legacy block (Q4_0 ... Q8_0, IQ4_NL)
QK_K = 256    # weights per k-quant super-block
FP16 = 16
NF4_NESTED_BLOCKSIZE = 256  # bitsandbytes double quantization: one fp32 scale per 256 absmax

#: the 16 levels of IQ4_NL / IQ4_XS: a non-uniform 4-bit grid, denser near zero
IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                       1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
IQ4_LEVELS.setflags(write=False)


@dataclass(frozen=True)
class Field:
    """One field of a block: ``count`` values of ``bits`` bits each (``what`` they are).

    ``name`` is ggml's field name (``qs``, ``d``...); ``label`` the short caption the memory
    tables print (``"4-bit codes"``), defaulting to ``name``.
    """

    name: str
    count: int
    bits: int
    what: str = ""
    label: str = ""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def nbytes(self) -> int:
        return self.count * self.bits // BITS_PER_BYTE


@dataclass(frozen=True)
class BlockType:
    """A storage type: ``block_size`` weights stored as ``fields``.

    ``ggml_type`` is the GGUF type id (``None`` outside GGUF, e.g. NF4).
    """

    name: str
    ggml_type: int | None
    block_size: int
    fields: tuple[Field, ...]
    note: str = ""

    @property
    def layout(self) -> tuple[Field, ...]:
        """Same as ``fields`` (the name :mod:`qlearn.kquants` uses)."""
        return self.fields

    @property
    def bits_per_block(self) -> int:
        return sum(f.count * f.bits for f in self.fields)

    @property
    def type_size(self) -> int:
        """Bytes per block."""
        return self.bits_per_block // BITS_PER_BYTE

    @property
    def bits_per_weight(self) -> float:
        return self.bits_per_block / self.block_size

    def offsets(self) -> dict[str, tuple[int, int]]:
        """Field name -> (start, stop) byte offsets inside one block."""
        out, pos = {}, 0
        for f in self.fields:
            out[f.name] = (pos, pos + f.nbytes)
            pos += f.nbytes
        return out


_D = Field("d", 1, FP16, "fp16 scale", "fp16 d")
_DMIN = Field("dmin", 1, FP16, "fp16 super-scale of the mins", "fp16 dmin")
_M = Field("m", 1, FP16, "fp16 min", "fp16 m")
_QH = Field("qh", QK, 1, "5th bit of each code", "high bits")
_QHK = Field("qh", QK_K, 1, "5th bit of each code", "high bits")
_SCALES_K = Field("scales", 16, 6, "8 x (6-bit scale, 6-bit min)", "6-bit scales+mins")

GGUF_TYPES: dict[str, BlockType] = {t.name: t for t in [
    BlockType("Q4_0", 2, QK, (_D, Field("qs", QK, 4, "4-bit codes, y = (q-8)*d", "4-bit codes")),
              "x = d*(q-8)"),
    BlockType("Q4_1", 3, QK, (_D, _M, Field("qs", QK, 4, "4-bit codes, y = q*d + m",
                                            "4-bit codes")), "x = d*q + m"),
    BlockType("Q5_0", 6, QK, (_D, _QH, Field("qs", QK, 4, "low 4 bits, y = (q-16)*d",
                                             "low 4 bits")), "x = d*(q-16)"),
    BlockType("Q5_1", 7, QK, (_D, _M, _QH, Field("qs", QK, 4, "low 4 bits, y = q*d + m",
                                                 "low 4 bits")), "x = d*q + m"),
    BlockType("Q8_0", 8, QK, (_D, Field("qs", QK, 8, "int8 codes, y = q*d", "int8 codes")),
              "x = d*q"),
    BlockType("Q2_K", 10, QK_K, (Field("scales", 32, 4, "16 x (4-bit scale, 4-bit min)",
                                       "4-bit scales+mins"),
                                 Field("qs", QK_K, 2, "2-bit codes", "2-bit codes"), _D, _DMIN),
              "16 sub-blocks of 16"),
    BlockType("Q3_K", 11, QK_K, (Field("hmask", QK_K, 1, "3rd bit of each code", "high-bit mask"),
                                 Field("qs", QK_K, 2, "low 2 bits", "low 2 bits"),
                                 Field("scales", 16, 6, "16 x 6-bit signed scales",
                                       "6-bit scales"), _D),
              "16 sub-blocks of 16"),
    BlockType("Q4_K", 12, QK_K, (_D, _DMIN, _SCALES_K,
                                 Field("qs", QK_K, 4, "4-bit codes", "4-bit codes")),
              "8 sub-blocks of 32"),
    BlockType("Q5_K", 13, QK_K, (_D, _DMIN, _SCALES_K, _QHK,
                                 Field("qs", QK_K, 4, "low 4 bits", "low 4 bits")),
              "8 sub-blocks of 32"),
    BlockType("Q6_K", 14, QK_K, (Field("ql", QK_K, 4, "low 4 bits", "low 4 bits"),
                                 Field("qh", QK_K, 2, "high 2 bits", "high 2 bits"),
                                 Field("scales", 16, 8, "16 x int8 scales", "int8 scales"), _D),
              "16 sub-blocks of 16"),
    BlockType("IQ4_NL", 20, QK, (_D, Field("qs", QK, 4, "indices into the 16 IQ4 levels")),
              "x = d * IQ4_LEVELS[q]"),
    BlockType("IQ4_XS", 23, QK_K, (_D, Field("scales_h", 8, 2, "high 2 bits of 8 6-bit scales"),
                                   Field("scales_l", 8, 4, "low 4 bits of 8 6-bit scales"),
                                   Field("qs", QK_K, 4, "indices into the 16 IQ4 levels")),
              "8 sub-blocks of 32"),
]}


def _plain(name: str, ggml_type: int, bits: int) -> BlockType:
    return BlockType(name, ggml_type, 1, (Field("value", 1, bits, f"{bits}-bit number"),),
                     f"one {bits}-bit number per weight")


PLAIN_TYPES: dict[str, BlockType] = {t.name: t for t in [
    _plain("F32", 0, 32), _plain("F16", 1, 16), _plain("BF16", 30, 16), _plain("F64", 28, 64),
    _plain("I8", 24, 8), _plain("I16", 25, 16), _plain("I32", 26, 32), _plain("I64", 27, 64),
]}


def get(name) -> BlockType:
    """The :class:`BlockType` of a GGUF type name (``"Q4_K"``, ``"q4_k"``, ``"F16"``) or a
    ``gguf.GGMLQuantizationType``."""
    key = getattr(name, "name", name)
    if not isinstance(key, str):
        raise ValueError(f"a block type is named by a string such as 'Q4_K', got {name!r}")
    key = key.upper()
    t = GGUF_TYPES.get(key) or PLAIN_TYPES.get(key)
    if t is None:
        raise ValueError(f"unknown ggml type {name!r}: expected one of "
                         f"{', '.join([*GGUF_TYPES, *PLAIN_TYPES])}")
    return t


def bits_per_weight(name) -> float:
    """Storage bits per weight of a GGUF type: bytes per block * 8 / weights per block."""
    return get(name).bits_per_weight


def block_info(name) -> tuple[int, int]:
    """``(block_size, type_size)``: weights and bytes per block."""
    t = get(name)
    return t.block_size, t.type_size


@validate.also_accepts(group_size="blocksize")
def nf4_type(blocksize: int = 64, compress_statistics: bool = False,
             nested_blocksize: int = NF4_NESTED_BLOCKSIZE) -> BlockType:
    """bitsandbytes' 4-bit storage: 4-bit codes plus one fp32 absmax per ``blocksize`` weights,
    or (double quantization) one 8-bit absmax code per block and one fp32 scale per
    ``nested_blocksize`` blocks (the single fp32 offset per tensor is not counted)."""
    if not compress_statistics:
        return BlockType("NF4", None, blocksize,
                         (Field("codes", blocksize, 4, "4-bit codes", "4-bit codes"),
                          Field("absmax", 1, 32, "fp32 absmax", "fp32 absmax")),
                         f"bitsandbytes blocksize {blocksize}")
    n = blocksize * nested_blocksize
    return BlockType("NF4 + double quant", None, n,
                     (Field("codes", n, 4, "4-bit codes", "4-bit codes"),
                      Field("absmax codes", nested_blocksize, 8, "8-bit absmax", "8-bit absmax"),
                      Field("absmax scale", 1, 32, "fp32 absmax scale", "fp32 absmax scale")),
                     f"absmax of {nested_blocksize} blocks quantized to 8 bits with one fp32 "
                     f"scale")
