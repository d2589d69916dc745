"""qlearn.blocktypes: the one table of block types, checked against gguf, read by every module."""

import gguf
import numpy as np
import pytest

from qlearn import blocktypes as B
from qlearn import gguf_mixes, kernels, kquants, memory, nf4


@pytest.mark.parametrize("name", [*B.GGUF_TYPES, *B.PLAIN_TYPES])
def test_every_type_matches_the_gguf_registry(name):
    t = B.get(name)
    g = gguf.GGMLQuantizationType[name]
    assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[g]
    assert t.ggml_type == int(g)


def test_the_modules_read_the_one_table():
    assert kquants.QTYPES is B.GGUF_TYPES and kquants.QType is B.BlockType
    assert kquants.IQ4_VALUES is B.IQ4_LEVELS and kernels.IQ4_LEVELS is B.IQ4_LEVELS
    for name, t in B.GGUF_TYPES.items():
        assert kernels.block_info(name) == (t.block_size, t.type_size)
        assert gguf_mixes.bits_per_weight(name) == t.bits_per_weight
        assert memory.FORMATS[name].bits_per_weight == t.bits_per_weight
        assert [(f.count, f.bits) for f in memory.FORMATS[name].fields] == \
            [(f.count, f.bits) for f in t.fields]
    for dq in (False, True):
        t = B.nf4_type(64, dq)
        assert nf4.bits_per_weight(64, dq) == t.bits_per_weight
        assert memory.bits_per_weight(t.name) == t.bits_per_weight


def test_hand_checked_rows():
    assert B.bits_per_weight("Q4_K") == 4.5 and B.bits_per_weight("q6_k") == 6.5625
    assert B.get("Q4_K").offsets()["qs"] == (16, 144)
    assert B.nf4_type(64).bits_per_weight == 4 + 32 / 64
    assert not B.IQ4_LEVELS.flags.writeable and B.IQ4_LEVELS.dtype == np.int8
    with pytest.raises(ValueError, match="unknown ggml type 'Q9_K'"):
        B.get("Q9_K")
