"""The Triton implicit-GEMM kernel, run by Triton's CPU interpreter (no GPU needed).

Triton is a GPU requirement (requirements/gpu.txt), not a CPU one, and must not go into the venv
here. The test finds it in the venv or in ``$TRITON_SITE`` (default ``/tmp/triton-site``, filled by
``pip install --target /tmp/triton-site triton==3.7.1``) and is skipped, with that instruction,
where neither has it. On a GPU machine test_gpu.py exercises the compiled kernel as well. Runs in a
subprocess because TRITON_INTERPRET must be set before Triton is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRITON_SITE = Path(os.environ.get("TRITON_SITE", "/tmp/triton-site"))
_HAVE = importlib.util.find_spec("triton") is not None or (TRITON_SITE / "triton" / "__init__.py").exists()
pytestmark = pytest.mark.skipif(not _HAVE, reason=f"triton not installed (GPU requirement): pip install --target "
                                f"{TRITON_SITE} triton==3.7.1 to run the kernel in Triton's CPU interpreter")

SCRIPT = r"""
import torch
from engines.sparse import SubMConv3d, SparseConv3d
from engines.sparse import triton_kernels as T
from engines.sparse.autotune import DATAFLOWS
from tests.engines.conftest import random_sparse, rel_err
x = random_sparse(400, 20, shape=(10, 10, 8), batch=2, dtype=torch.float32, seed=1)
for layer in (SubMConv3d(20, 24, 3), SparseConv3d(20, 40, 3, 2, 1)):
    layer.eval()
    with torch.no_grad():
        km = layer.kernel_map(x)
        ref = DATAFLOWS["gather_scatter"](x.feats, layer.weight, km)
        for sort in (False, True):
            assert rel_err(T.implicit_gemm(x.feats, layer.weight.detach(), km, sort=sort), ref) < 1e-5
        o16 = T.implicit_gemm(x.feats.half(), layer.weight.detach().half(), km, sort=True)
        assert rel_err(o16.float(), ref) < 2e-2
print("ok")
"""


@pytest.mark.slow
def test_triton_kernel_in_interpreter() -> None:
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(p for p in (str(root), str(TRITON_SITE), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
