"""The engine leaves torch's thread count as the caller set it.

numba's OpenMP layer, when it starts, resets the process-wide OpenMP thread count torch shares; a node
configured for one or two threads then ran its dense layers on every core (on a 16-core machine, 16). The layer starts once per process,
so the check runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import torch
torch.set_num_threads(1)
from engines.sparse import SparseTensor, SubMConv3d
from engines.sparse.kernel_map import _set_numba_threads
assert torch.get_num_threads() == 1  # (reading it first is what made the reset visible)
_set_numba_threads(1)  # starts numba's OpenMP layer, as a node with a numba stage does
assert torch.get_num_threads() == 1, torch.get_num_threads()
from tests.engines.conftest import random_sparse
x = random_sparse(3000, 16, shape=(30, 30, 10), batch=1, dtype=torch.float32, seed=3)
for dataflow in ("gather_scatter", "fused_gather_scatter", "implicit_gemm"):
    with torch.no_grad():
        SubMConv3d(16, 16, 3, dataflow=dataflow).eval()(SparseTensor(x.feats, x.coords, 1, x.spatial_shape))
    assert torch.get_num_threads() == 1, (dataflow, torch.get_num_threads())
print("threads", torch.get_num_threads())
"""


@pytest.mark.skipif(__import__("os").cpu_count() == 1, reason="one core: numba's default equals torch's setting")
def test_sparse_conv_keeps_torch_threads() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "threads 1" in r.stdout
