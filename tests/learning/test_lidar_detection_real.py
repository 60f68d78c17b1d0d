"""The packaged LiDAR weights on the real labelled frames of ``../shared/data`` (evaluation only): the KITTI
object frames and the nuScenes keyframe, as ``perception-stack lidar-eval --real-only`` scores them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import SHARED_DATA, require

NUSC_PKL = SHARED_DATA / "nuscenes_mmdet3d_demo/demo/data/nuscenes/n015-2018-07-24-11-22-45+0800.pkl"
KITTI_OBJECT_ROOT = SHARED_DATA / "kitti_object_vis/data/object"
KITTI_000008_PKL = SHARED_DATA / "kitti_mmdet3d_demo/demo/data/kitti/000008.pkl"


def test_nuscenes_boxes_hold_their_points_in_the_vehicle_frame():
    """The frame conversion the evaluation rests on (scan and boxes from the LiDAR frame, x right and y
    forward, into base_link): each labelled box, moved with the scan, holds the points nuScenes counted in
    it (``num_lidar_pts``, from its own annotation of this sweep), and the ground lies at base_link's
    z = 0 (a scan left in the LiDAR frame would put it 1.84 m below)."""
    from perception_nodes.calibration import transform_points
    from perception_nodes.datasets.mmdet3d import read_mmdet3d_info
    from perception_nodes.eval.detection_eval import points_in_boxes

    frame = next(read_mmdet3d_info(require(NUSC_PKL)))
    base = transform_points(frame.lidar_to_base, frame.points[:, :3].astype(np.float64))
    ours = points_in_boxes(frame.boxes_in_base(), base)
    theirs = [b.extras["num_lidar_pts"] for b in frame.boxes]
    counted = [(o, t) for o, t in zip(ours, theirs, strict=True) if t >= 10]
    assert len(counted) >= 10
    # boundary points and the keyframe's own sweep vs the annotation's: within 10 % (+ 2 points)
    assert all(abs(o - t) <= 0.1 * t + 2 for o, t in counted), counted
    assert np.percentile(base[:, 2], 5) == pytest.approx(0.0, abs=0.5)  # base_link on the ground
    # and x points ahead, as the network's base_link: the front camera's optical axis (its own extrinsics,
    # not the LiDAR's) lies along +x of the vehicle frame, the left camera's to +y
    for cam, axis in (("CAM_FRONT", [1.0, 0.0, 0.0]), ("CAM_FRONT_LEFT", [0.5, 0.87, 0.0])):
        cam_to_lidar = np.linalg.inv(frame.cameras[cam]["lidar_to_cam"])
        optical_axis = frame.lidar_to_base[:3, :3] @ cam_to_lidar[:3, 2]
        assert optical_axis @ np.array(axis) > 0.9, (cam, optical_axis)


@pytest.mark.slow
def test_real_only_evaluation_scores_kitti_and_the_nuscenes_keyframe(tmp_path):
    from perception_nodes.calibration import transform_points
    from perception_nodes.datasets.mmdet3d import read_mmdet3d_info
    from perception_nodes.eval.detection_eval import load_detection_eval_config, points_in_boxes
    from perception_nodes.learning.lidar_detection_eval import main

    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"kitti": str(require(KITTI_OBJECT_ROOT)), "kitti_fov_deg": 90.0,
                                   "kitti_infos": [str(require(KITTI_000008_PKL))],
                                   "nuscenes": str(require(NUSC_PKL)),
                                   "nuscenes_self_returns": {"min_return_range": 1.0, "ego_box": [-1.0, 3.5, -1.0, 1.0]},
                                   "sets": {"never_run": [{"generate": {"scenario": "highway", "seed": 9}}]},
                                   "validation": [{"generate": {"scenario": "urban_street", "seed": 8}}]}))
    out = tmp_path / "metrics.json"
    assert main(["--real-only", "--eval-config", str(cfg), "--threads", "1", "--metrics-out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["generated"] == {}  # --real-only: no generated set was built or scored, no validation fit
    assert "validation_fit_record" not in m and m["validation_sets"] == []
    assert len(m["kitti"]["detections_per_frame"]) == 4  # 000000-000002 and 000008
    assert m["kitti"]["infos"] == [str(KITTI_000008_PKL)]
    nus = m["nuscenes"]
    assert nus["frames"] == 1 and len(nus["detections_per_frame"]) == 1 and 0.0 <= nus["mean_vacuity"] <= 1.0
    # the scored ground truth, counted here from the dataset alone with the scorer's config: mapped labels
    # (bicycle -> cyclist), inside the class's range gate, at least one point of the scan
    ev = load_detection_eval_config()
    frame = next(read_mmdet3d_info(NUSC_PKL))
    boxes = frame.boxes_in_base()
    n_pts = points_in_boxes(boxes, transform_points(frame.lidar_to_base, frame.points[:, :3].astype(np.float64)))
    expected: dict[str, int] = {}
    for b, n in zip(boxes, n_pts, strict=True):
        cls = ev.class_map.map_boxes([b]).boxes
        if cls and float(np.hypot(*b.center[:2])) <= ev.max_range_m[cls[0].label] and n >= ev.min_points:
            expected[cls[0].label] = expected.get(cls[0].label, 0) + 1
    assert nus["counts"]["gt"] == expected and expected.get("car", 0) > 0
    # the ego's own returns: dropped before the network where the config has a section (nuScenes), counted
    from perception_nodes.pipeline.self_returns import self_returns

    base = transform_points(frame.lidar_to_base, frame.points[:, :3].astype(np.float64))
    near, body = self_returns(base, frame.lidar_to_base[:2, 3], min_return_range=1.0, ego_box=(-1.0, 3.5, -1.0, 1.0))
    assert nus["self_returns"]["dropped_per_frame"] == [{"near_sensor": int(near.sum()), "ego_box": int(body.sum())}]
    assert near.sum() > 1000 and m["kitti"]["self_returns"] is None  # no kitti section: every return kept
    assert nus["nuscenes"]["classes"] == sorted(expected, key=list(ev.classes).index)
    assert 0.0 <= nus["nuscenes"]["map"] <= 1.0
    # headings of the labelled cars found within 2 m: every labelled car counted (KITTI: 1 + 1 + 6), errors
    # folded into 0-90 deg, one per car found
    for part, cars in ((m["kitti"], 8), (nus, sum(b.label.lower() == "car" for b in boxes))):
        cy = part["car_yaw"]
        assert cy["labelled_cars"] == cars and cy["with_car_detection_within_2m"] == len(cy["abs_yaw_error_mod_pi_deg"])
        assert cy["with_car_detection_within_2m"] <= cars
        assert all(0.0 <= e <= 90.0 for e in cy["abs_yaw_error_mod_pi_deg"])


def test_a_malformed_self_return_section_is_refused_before_any_work(tmp_path, capsys):
    from perception_nodes.learning.lidar_detection_eval import main
    from perception_nodes.pipeline.self_returns import self_return_settings

    assert self_return_settings({"min_return_range": 1, "ego_box": [-1, 2, -1, 1]}, "x") == {
        "min_return_range": 1.0, "ego_box": (-1.0, 2.0, -1.0, 1.0)}
    assert self_return_settings({}, "x") == {"min_return_range": 0.0, "ego_box": None}
    for bad, why in (({"ego_box": [1, -1, -1, 1]}, "kitti_self_returns.ego_box"), ({"radius": 1}, "unknown key"),
                     ({"min_return_range": -1}, "min_return_range must be >= 0"), ([1.0, 2.0], "expected a mapping"),
                     ({"min_return_range": None}, "must be a number"), ({"ego_box": "1234"}, "string")):
        cfg = tmp_path / "eval.yaml"
        cfg.write_text(yaml.safe_dump({"kitti": "/nonexistent", "kitti_self_returns": bad}))
        with pytest.raises(SystemExit):
            main(["--real-only", "--eval-config", str(cfg), "--metrics-out", str(tmp_path / "m.json")])
        assert why in capsys.readouterr().err
        assert not (tmp_path / "m.json").exists()


def test_real_frames_are_scored_without_autograd():
    """The network runs on the real frames as in the node: no autograd graph (which would also leave the fused
    inference path)."""
    from perception_nodes.learning.branches import get_branch
    from perception_nodes.learning.lidar_detection_eval import evaluate_nuscenes
    from perception_nodes.models.weights_io import default_weights_dir, load_state, read_sidecar

    folder = default_weights_dir("lidar_detection")
    branch = get_branch("lidar_detection")(read_sidecar(folder, "lidar_detection")["branch_config"])
    model = branch.build_model()
    model.load_state_dict(load_state(folder))
    seen: list[bool] = []

    class Spy(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, scans):  # noqa: ANN001
            seen.append(torch.is_grad_enabled())
            return self.net(scans)

    evaluate_nuscenes(branch, Spy(model).eval(), require(NUSC_PKL))
    assert seen == [False]


def test_camera_view_is_the_left_colour_camera_image():
    from perception_nodes.learning.lidar_detection_eval import camera_view, in_camera_view, kitti_frames

    frames = list(kitti_frames(require(KITTI_OBJECT_ROOT), [require(KITTI_000008_PKL)]))
    assert len(frames) == 4
    for f in frames:
        ahead = np.array([[20.0, 0.0, 0.8], [20.0, 20.0 * np.tan(np.radians(44.0)), 0.8],
                          [20.0, -20.0 * np.tan(np.radians(44.0)), 0.8], [-10.0, 0.0, 0.8],
                          [20.0, 20.0 * np.tan(np.radians(30.0)), 0.8]])
        got = camera_view(f, ahead)
        # straight ahead and 30 deg left are in the image; 44 deg either side (inside the old +-45 deg wedge) and
        # behind are not: KITTI's colour camera sees about 40 deg to each side
        assert got.tolist() == [True, False, False, False, True], (f.frame_id, got)
        assert in_camera_view(ahead).tolist() == [True, True, True, False, True]
        # every labelled car of the frame projects into the image
        cars = np.array([b.center for b in f.boxes_in_base() if b.label == "Car"]).reshape(-1, 3)
        assert camera_view(f, cars).all()


def test_camera_view_falls_back_to_the_wedge_without_a_camera_image(tmp_path):
    import dataclasses

    from perception_nodes.learning.lidar_detection_eval import camera_view, in_camera_view, kitti_frames

    f = next(iter(kitti_frames(require(KITTI_OBJECT_ROOT))))
    pts = np.array([[20.0, 20.0 * np.tan(np.radians(44.0)), 0.8], [20.0, 0.0, 0.8], [-5.0, 0.0, 0.8]])
    not_png = tmp_path / "image.png"
    not_png.write_bytes(b"not an image")
    for cams in ({}, {"CAM2": {**f.cameras["CAM2"], "image_path": not_png}},
                 {"CAM2": {**f.cameras["CAM2"], "image_path": tmp_path / "missing.png"}}):
        g = dataclasses.replace(f, cameras=cams)
        assert camera_view(g, pts).tolist() == in_camera_view(pts).tolist() == [True, True, False]
    assert camera_view(f, np.zeros((0, 3))).shape == (0,)
