"""Faults lower the scores where they act: ground truth no longer follows the faulted scan."""

from __future__ import annotations

import json

import pytest

from perception_nodes.cli import main
from perception_nodes.eval.schema import validate
from perception_nodes.replay import replay
from perception_nodes.scenario.bag import write_scenario_bag
from perception_nodes.scenario.faults import Faults

pytestmark = pytest.mark.slow


def _run(tmp_path, name, faults):
    bag = write_scenario_bag(tmp_path / name / "bag", duration_s=0.4, cameras=False, progress=False, faults=faults)
    m = replay(bag, None, tmp_path / name / "out", progress=False, report=False).metrics
    validate(m)
    return m["occupancy"]


def test_sector_loss_and_dropout_lower_recall_and_raise_vacuity_where_they_act(tmp_path):
    clean = _run(tmp_path, "clean", Faults())
    sector = _run(tmp_path, "sector", Faults(lidar_sector_deg=(-60.0, 60.0)))
    dropout = _run(tmp_path, "dropout", Faults(lidar_dropout=0.7, lidar_dropout_time=(0.0, 0.2)))
    c, s, d = clean["regions"], sector["regions"], dropout["regions"]
    # the scored cells stay the same: a fault cannot shrink the denominator any more
    assert s["all"]["cells"] == c["all"]["cells"] == d["all"]["cells"]
    assert "fault_affected" not in c
    # the lost forward sector: recall collapses there, not elsewhere, and vacuity rises there
    assert s["fault_affected"]["recall"]["value"] < 0.5 * c["all"]["recall"]["value"]
    assert s["fault_unaffected"]["recall"]["value"] > s["fault_affected"]["recall"]["value"] + 0.3
    assert s["all"]["recall"]["value"] < c["all"]["recall"]["value"]
    assert s["fault_affected"]["unknown_share"] > s["fault_unaffected"]["unknown_share"] + 0.3
    vac = sector["uncertainty"]["mean_vacuity"]
    assert vac["fault_affected"] > vac["fault_unaffected"] + 0.2
    assert sector["uncertainty"]["vacuity"]["auroc_fault_affected_vs_unaffected"] > 0.8
    # dropout in the first 2 frames: lower recall and more vacuity in those frames than in the others
    assert d["fault_affected"]["recall"]["value"] < d["fault_unaffected"]["recall"]["value"]
    assert dropout["uncertainty"]["mean_vacuity"]["fault_affected"] > dropout["uncertainty"]["mean_vacuity"]["fault_unaffected"]
    assert dropout["uncertainty"]["vacuity"]["auroc_fault_affected_vs_unaffected"] > 0.5


def test_evaluate_joins_jittered_stamps_and_fails_loudly_when_nothing_matches(tmp_path, capsys):
    bag = write_scenario_bag(tmp_path / "jitter", duration_s=0.3, cameras=False, progress=False,
                             faults=Faults(timestamp_jitter_s=0.002))
    assert main(["evaluate", "--bag", str(bag), "--out", str(tmp_path / "ok"), "--quiet", "--no-report"]) == 0
    doc = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    validate(doc)
    assert doc["frames_scored"] == 3 and doc["join"]["unmatched_predictions"] == 0
    assert doc["split"]["scenario"] == "urban_street" and doc["split"]["lidar"] == "hdl64"
    assert doc["split"]["faults"] == {"timestamp_jitter_s": 0.002}
    out = capsys.readouterr().out
    assert "iou" in out and "base rate" in out and "95% CI" in out
    # a tolerance far below the jitter: nothing can be joined, and evaluate says so with a failing status
    rc = main(["evaluate", "--bag", str(bag), "--out", str(tmp_path / "none"), "--quiet", "--no-report",
               "--match-tolerance", "1e-6"])
    err = capsys.readouterr().err
    assert rc == 1 and "no frame was scored" in err and "found no partner" in err
