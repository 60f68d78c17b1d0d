"""The packaged LiDAR branch weights: the sidecar says what produced them, and they rebuild the network
that runs on a real KITTI scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.models import decode_batch
from perception_nodes.models.weights_io import default_weights_dir, load_lidar_detection, read_sidecar


#: packaged folders and the held-out sets each one's sidecar reports: the default (v18, trained on plain and
#: realism scenes; scored on both kinds), the opt-in weights for plain generated scenes (v8, the default until 4 Dec
#: 2026) and the opt-in v13 (realism scenes only)
# the default's sidecar holds its goal-check sets (calibration refitted with the box head, 18th session)
FOLDERS = {"lidar_detection": {"seen_types_realism12", "held_out_type_and_lidar_realism12", "seen_types_fresh16",
                               "held_out_type_and_lidar_fresh16"},
           "lidar_detection_plain": {"seen_types_new_seeds", "held_out_type_and_lidar"},
           "lidar_detection_realism": {"seen_types_realism", "held_out_type_and_lidar_realism"}}


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_sidecar_documents_config_split_code_and_metrics(name):
    folder = default_weights_dir(name)
    side = read_sidecar(folder, "lidar_detection")
    assert (folder / "model.safetensors").stat().st_size < 5 * 2**20  # "a few MB" at most
    assert side["config"]["backbone"] and side["code_version"]
    tr = side["training"]
    assert tr["epochs"] >= 1 and tr["wall_seconds_train_and_validation"] > 0
    assert tr["split"]["train"]["scenarios"] and tr["split"]["val"]["lidars"]
    gen = side["metrics"]["generated"]
    assert FOLDERS[name] <= set(gen)
    for held_out in FOLDERS[name]:
        assert "car_ap_bev" in gen[held_out]["before"] and "coverage_xy" in gen[held_out]["after"]
    assert side["metrics"]["kitti"]["frames"] >= 1 and "nuscenes" in side["metrics"]


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_packaged_calibration_was_fitted_on_scenes_disjoint_from_the_reported_ones(name):
    from perception_nodes.models.calibration import DetectionCalibration

    side = read_sidecar(default_weights_dir(name), "lidar_detection")
    cal = DetectionCalibration.from_sidecar(side)
    assert not cal.is_identity and cal.fitted["detections"] > 0
    scenes = side["metrics"]["scenes"]
    fitted = {_scene(v) for v in scenes["validation"]}
    reported = {_scene(v) for role, srcs in scenes.items() if role.startswith("held_out/") for v in srcs}
    trained = {_scene(v["generate"]) for v in side["training"]["config"]["data"]["train"]}
    assert fitted and reported and trained
    assert not fitted & reported and not fitted & trained and not reported & trained


def _scene(g: dict) -> tuple:
    return (g["scenario"], g["seed"], g["lidar"])


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_packaged_network_runs_on_a_real_scan(kitti_frames, name):
    net, side = load_lidar_detection(default_weights_dir(name),
                                     overrides={"backbone_args": {**side_args(name), "dataflow": "gather_scatter"}})
    pts, _ = kitti_frames[0]
    with torch.no_grad():
        out = net(torch.from_numpy(pts))
    assert int(out.num_voxels[0]) > 1000
    assert torch.isfinite(out.class_alpha).all() and (out.class_alpha >= 1).all()
    det = decode_batch(out, net.head_grid, net.config.classes)[0]
    assert np.isfinite(det.center).all() and np.isfinite(det.covariance).all()
    assert (det.score <= 1).all() and (det.vacuity > 0).all()


def side_args(name: str = "lidar_detection") -> dict:
    return dict(read_sidecar(default_weights_dir(name), "lidar_detection")["config"]["backbone_args"])


def test_the_evaluated_and_the_running_network_configs_agree(tmp_path):
    """The sidecar's ``config`` (nodes, demo, benchmarks) and ``branch_config.model`` (lidar-eval) describe one
    network; a sidecar edited in one place only is refused by both loaders, naming the key."""
    import json
    import shutil

    import pytest

    from perception_nodes.learning.lidar_detection_eval import main as lidar_eval
    from perception_nodes.models.weights_io import WeightsError, lidar_config_mismatch

    folder = default_weights_dir("lidar_detection")
    side = read_sidecar(folder, "lidar_detection")
    assert lidar_config_mismatch(side) == []
    split = tmp_path / "w"
    shutil.copytree(folder, split)
    doc = json.loads((split / "model.json").read_text())
    doc["branch_config"]["model"]["context_margin_m"] = 10.0 + float(doc["config"].get("context_margin_m", 0.0))
    (split / "model.json").write_text(json.dumps(doc))
    assert lidar_config_mismatch(read_sidecar(split, "lidar_detection")) == ["context_margin_m"]
    with pytest.raises(WeightsError, match="context_margin_m"):
        load_lidar_detection(split)
    with pytest.raises(SystemExit):
        lidar_eval(["--weights", str(split), "--real-only", "--metrics-out", str(tmp_path / "m.json")])
    # a section that does not build at all is a WeightsError too (not a ConfigError traceback)
    doc["branch_config"]["model"]["context_margin_m"] = -1.0
    (split / "model.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="does not build"):
        load_lidar_detection(split)
    with pytest.raises(SystemExit):
        lidar_eval(["--weights", str(split), "--real-only", "--metrics-out", str(tmp_path / "m.json")])


def test_weights_parameter_resolves_from_any_working_directory(tmp_path, monkeypatch):
    """A params file naming the opt-in weights works wherever the node is started (ros2 launch runs it from
    anywhere): a bare folder name under the packaged weights, or the path from the repository root."""
    from perception_nodes.models.weights_io import resolve_weights_folder

    realism = default_weights_dir("lidar_detection_realism")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights_folder("", "lidar_detection") == default_weights_dir("lidar_detection")
    assert resolve_weights_folder("lidar_detection_realism", "lidar_detection") == realism
    assert resolve_weights_folder("perception_nodes/models/weights/lidar_detection_realism", "lidar_detection") == realism
    (tmp_path / "mine").mkdir()  # a folder of the user's own, relative to where they start it, wins
    assert resolve_weights_folder("mine", "lidar_detection").resolve() == (tmp_path / "mine").resolve()
    assert resolve_weights_folder("no_such_folder", "lidar_detection").name == "no_such_folder"
    net, side = load_lidar_detection(resolve_weights_folder("lidar_detection_realism", "lidar_detection"))
    assert side["training"]["config"]["out"].endswith("lidar_detection_finetune_v13")
    assert resolve_weights_folder("lidar_detection_plain", "lidar_detection") == default_weights_dir("lidar_detection_plain")
    _, default = load_lidar_detection(resolve_weights_folder("", "lidar_detection"))
    assert default["training"]["config"]["out"].endswith("lidar_detection_finetune_v18")


def test_lidar_eval_takes_the_weights_by_name_and_their_own_eval_config(tmp_path, monkeypatch):
    """``lidar-eval --weights lidar_detection_plain`` reads the name as the params file does, and without
    ``--eval-config`` scores (and would refit) with the config the sidecar was scored with: the default's
    calibration was fitted on the validation of lidar_detection_eval_goals.yaml, and a refit on another config's
    scenes would silently replace it."""
    import json

    from perception_nodes.learning.lidar_detection_eval import DEFAULT_EVAL_CONFIG, eval_config_of
    from perception_nodes.learning.lidar_detection_eval import main as lidar_eval

    default = read_sidecar(default_weights_dir("lidar_detection"), "lidar_detection")
    assert eval_config_of(default).name == "lidar_detection_eval_goals.yaml"
    validation = {(v["scenario"], v["seed"], v["lidar"]) for v in default["metrics"]["scenes"]["validation"]}
    import yaml

    doc = yaml.safe_load(eval_config_of(default).read_text())
    assert validation == {(g["generate"]["scenario"], g["generate"]["seed"], g["generate"]["lidar"])
                          for g in doc["validation"]}
    # a sidecar naming no config (or one that is gone) falls back to the documented default
    assert eval_config_of(read_sidecar(default_weights_dir("lidar_detection_plain"), "lidar_detection")) == DEFAULT_EVAL_CONFIG
    assert eval_config_of({"metrics": {"eval_config": "configs/train/no_such.yaml"}}) == DEFAULT_EVAL_CONFIG

    assert eval_config_of({"metrics": "x"}) == DEFAULT_EVAL_CONFIG  # malformed entries: no crash
    assert eval_config_of({"metrics": {"eval_config": 5}}) == DEFAULT_EVAL_CONFIG
    assert eval_config_of({"metrics": {"eval_config": "configs"}}) == DEFAULT_EVAL_CONFIG  # a folder is no config

    monkeypatch.chdir(tmp_path)  # the bare name resolves from anywhere, as in the params file
    out = tmp_path / "m.json"
    for name, config in (("lidar_detection_plain", "configs/train/lidar_detection_eval.yaml"),
                         ("lidar_detection", "configs/train/lidar_detection_eval_goals.yaml")):
        assert lidar_eval(["--weights", name, "--real-only", "--no-kitti", "--no-nuscenes",
                           "--metrics-out", str(out)]) == 0
        assert json.loads(out.read_text())["eval_config"] == config
    with pytest.raises(SystemExit):  # a name that is no folder: a usage error, not a traceback
        lidar_eval(["--weights", "no_such_weights", "--real-only", "--metrics-out", str(out)])
    # a refit with no recorded config and none given: refused (it would write a fit on unknown scenes)
    with pytest.raises(SystemExit):
        lidar_eval(["--weights", "lidar_detection_plain", "--fit-calibration", "--metrics-out", str(out)])
    # a sidecar naming a config that is gone: refused, not silently replaced by the default
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(default_weights_dir("lidar_detection"), copy)
    doc = json.loads((copy / "model.json").read_text())
    doc["metrics"]["eval_config"] = "configs/train/no_such.yaml"
    (copy / "model.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit):
        lidar_eval(["--weights", str(copy), "--real-only", "--metrics-out", str(out)])
    # truncated tensors: a usage error too
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(SystemExit):
        lidar_eval(["--weights", str(copy), "--real-only", "--eval-config",
                    str(DEFAULT_EVAL_CONFIG), "--metrics-out", str(out)])
