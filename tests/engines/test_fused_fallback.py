"""Where the fused loop cannot run (torch without MKL: aarch64/Jetson builds), the fused dataflow names
must still work: they fall back to gather-scatter, with the same result at every thread count."""

from __future__ import annotations

import pytest
import torch

from engines.sparse import SubMConv3d, dataflow_fused

from .conftest import random_sparse

FUSED = ["fused_gather_scatter", "fused_hybrid", "implicit_gemm_fused"]


@pytest.mark.parametrize("dataflow", FUSED)
def test_without_blas_fused_names_run_as_gather_scatter(monkeypatch: pytest.MonkeyPatch, dataflow: str) -> None:
    monkeypatch.setattr(dataflow_fused, "_blas", lambda: None)
    ran = []
    monkeypatch.setattr(dataflow_fused, "_fused_cpu", lambda *a, **k: ran.append(1))  # must not be reached
    assert not dataflow_fused.available()
    x = random_sparse(3000, 16, shape=(16, 14, 10), batch=2, dtype=torch.float32, seed=5)
    torch.manual_seed(0)
    ours = SubMConv3d(16, 24, 3, bias=False, dataflow=dataflow).eval()
    ref = SubMConv3d(16, 24, 3, bias=False, dataflow="gather_scatter").eval()
    ref.load_state_dict(ours.state_dict())
    prev = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(ours(x).feats)
                expected = ref(x).feats
            assert torch.equal(outs[-1], expected), f"{dataflow} at {threads} threads is not gather-scatter's result"
    finally:
        torch.set_num_threads(prev)
    assert not ran
    assert torch.equal(outs[0], outs[1])
