"""bev_fusion_eval's held-out check and options (the scoring itself runs minutes: README "BEVFusion-style fuser")."""

from __future__ import annotations

import pytest

import yaml

from perception_nodes.learning.bev_fusion_eval import HELD_OUT, REPO, check_held_out, main
from perception_nodes.learning.config import load_config


def test_held_out_seeds_are_in_no_training_config() -> None:
    check_held_out()  # the default 500-502
    check_held_out(tuple((s, k) for (s, _), k in zip(HELD_OUT, (700, 701, 702))))  # the fresh set


def test_a_training_scene_is_refused() -> None:
    with pytest.raises(ValueError, match="not held out"):
        check_held_out((("urban_street", 1),))  # a bev_fusion training scene


def test_seeds_option_refuses_training_seeds() -> None:
    with pytest.raises(ValueError, match="not held out"):
        main(["--seeds", "1", "701", "702"])


def test_run_and_weights_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--run", "out/x", "--weights", "out/y"])
    assert "exclusive" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bev_fusion", "bev_fusion_v2", "bev_fusion_v2_lidar_control"])
def test_fuser_training_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / "train" / f"{name}.yaml", branch="bev_fusion")
    assert cfg.branch == "bev_fusion"


def test_v2_and_its_control_differ_only_in_the_camera_dropout() -> None:
    """The control must separate "the camera helps" from "more fine-tuning helps": same recipe otherwise."""
    v2, ctl = (yaml.safe_load((REPO / "configs" / "train" / f"{n}.yaml").read_text())
               for n in ("bev_fusion_v2", "bev_fusion_v2_lidar_control"))
    assert v2["model"]["lidar_weights"] == ""  # today's packaged LiDAR weights
    assert ctl["train"]["lidar_only"] == 1.0 and ctl["train"]["camera_only"] == 0.0
    for k in set(v2) | set(ctl):
        if k not in ("out", "train", "eval"):
            assert v2.get(k) == ctl.get(k), k
    assert {**v2["train"], "camera_only": 0.0, "lidar_only": 1.0} == ctl["train"]


def test_the_scored_only_exception_covers_report_sets_alone(tmp_path):
    """The box head's eval config may hold the held-out layouts in its report ``sets`` (scored there, never fitted);
    the same layouts anywhere else in it, or in any other file, still fail the check."""
    from perception_nodes.eval.scored_only import SCORED_ONLY

    name = next(iter(SCORED_ONLY))
    scene = {"generate": {"scenario": "urban_street", "seed": 500, "duration_s": 4.0, "lidar": "hdl64"}}
    (tmp_path / name).write_text(yaml.safe_dump({"sets": {"plain": [scene]}}))
    check_held_out(configs=tmp_path)
    (tmp_path / name).write_text(yaml.safe_dump({"validation": [scene], "sets": {}}))
    with pytest.raises(ValueError, match="not held out"):
        check_held_out(configs=tmp_path)
    (tmp_path / name).unlink()
    (tmp_path / "other_eval.yaml").write_text(yaml.safe_dump({"sets": {"plain": [scene]}}))
    with pytest.raises(ValueError, match="not held out"):
        check_held_out(configs=tmp_path)
