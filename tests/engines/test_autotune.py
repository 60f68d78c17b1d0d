"""Autotuner: measures candidates, caches per workload, persists and reloads its choices."""

from __future__ import annotations

import json

import pytest
import torch

from engines.sparse import Autotuner, SubMConv3d, run_dataflow
from engines.sparse.autotune import DATAFLOWS, candidates_for, workload_key

from .conftest import random_sparse, rel_err


def test_tuner_picks_a_candidate_and_reuses_it(tmp_path) -> None:
    x = random_sparse(800, 16, shape=(20, 20, 8), batch=1, dtype=torch.float32, seed=61)
    conv = SubMConv3d(16, 16, 3).eval()
    km = conv.kernel_map(x)
    path = tmp_path / "tune.json"
    tuner = Autotuner(path, repeats=1)
    out = tuner.run(x.feats, conv.weight.detach(), km)
    key = workload_key(x.feats, conv.weight, km)
    assert tuner.choices[key] in candidates_for(x.device)
    assert set(tuner.timings[key]) == set(candidates_for(x.device))
    ref = DATAFLOWS["gather_scatter"](x.feats, conv.weight.detach(), km)
    assert rel_err(out, ref) < 1e-5
    saved = json.loads(path.read_text())
    assert saved["choices"][key] == tuner.choices[key]
    again = Autotuner(path)
    assert again.choices == tuner.choices
    # a reloaded choice is used without re-timing
    again.run(x.feats, conv.weight.detach(), km)
    assert again.timings == {}


def test_unknown_dataflow_rejected() -> None:
    x = random_sparse(10, 2, seed=62)
    conv = SubMConv3d(2, 2, 3)
    with pytest.raises(ValueError, match="unknown dataflow"):
        run_dataflow("nope", x.feats, conv.weight, conv.kernel_map(x))
