"""``perception-stack calib check``: check a rig's calibration offline on one LiDAR scan and its images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DESCRIPTION = (
    "Check a camera rig's calibration on one capture: LiDAR depth edges projected into each camera must "
    "line up with the image's edges better at the given extrinsic than at its 728 small perturbations "
    "(statistic F = share of perturbations scoring lower; OK >= ok_fraction, ERROR < error_fraction), and "
    "each stereo pair (both images given) must be rectified (median vertical disparity of ORB matches and "
    "horizontal disparity bias against the LiDAR, in px). The rig comes from a KITTI calib file "
    "(--kitti-calib: cameras left = P2, right = P3) or a project rig YAML with cameras and lidars sections "
    "(--rig; see calibration/README.md). Prints one line per camera and pair, then one JSON line. Exit "
    "status: 0 when nothing is ERROR, 1 when a camera or pair is ERROR, 2 on a bad calibration or input "
    "file. Statistic, thresholds and measured margins: docs/calibration.md.")

EXAMPLES = """examples:
  D=../shared/data/kitti_stereo_srcnn/demo
  perception-stack calib check --kitti-calib $D/calib.txt --image left=$D/left.png --image right=$D/right.png \\
      --velodyne $D/lidar.bin
  perception-stack calib check --kitti-calib $D/calib.txt --image $D/left.png --velodyne $D/lidar.bin \\
      --rotate left:x:2       # the same with the left camera's extrinsic pitched 2 deg (ERROR, exit 1)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``calib`` (with its ``check`` subcommand) on the CLI's subparsers."""
    c = sub.add_parser("calib", help="calibration tools (check a rig on real data)")
    csub = c.add_subparsers(dest="calib_command", required=True, metavar="COMMAND")
    k = csub.add_parser("check", help="check camera extrinsics against a LiDAR scan and stereo rectification",
                        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = k.add_mutually_exclusive_group(required=True)
    src.add_argument("--kitti-calib", type=Path, metavar="FILE", help="KITTI object calib file (P0..P3, R0_rect, "
                     "Tr_velo_to_cam); cameras 'left' (P2) and 'right' (P3), LiDAR 'velodyne'")
    src.add_argument("--rig", metavar="YAML", help="project rig YAML with cameras: and lidars: sections")
    k.add_argument("--image", action="append", required=True, metavar="[CAMERA=]PNG",
                   help="an image of a camera of the rig (repeatable); a bare path is camera 'left'")
    k.add_argument("--velodyne", type=Path, required=True, metavar="BIN",
                   help="LiDAR scan as KITTI .bin (float32 x, y, z, reflectance) in the LiDAR's frame")
    k.add_argument("--lidar", help="which LiDAR of the rig took the scan (default: the first)")
    k.add_argument("--rotate", action="append", default=[], metavar="CAMERA:AXIS:DEG",
                   help="turn a camera's extrinsic by DEG about its optical AXIS (x, y or z) before checking: "
                   "shows what a knocked camera reports (repeatable)")
    k.add_argument("--no-stereo", action="store_true", help="skip the stereo rectification check")
    k.set_defaults(func=cmd_check)


def _images(specs: list[str]) -> dict[str, np.ndarray]:
    from PIL import Image

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "left", spec
        out[name] = np.asarray(Image.open(path).convert("RGB"))
    return out


def cmd_check(a: argparse.Namespace) -> int:
    from perception_nodes.calibration_check import OK, check_rig, perturbed
    from perception_nodes.errors import CalibrationError
    from perception_nodes.rig import load_rig_model, rig_from_kitti

    try:
        images = _images(a.image)
        raw = np.fromfile(a.velodyne, dtype="<f4")
        if raw.size == 0 or raw.size % 4:
            raise CalibrationError(f"{a.velodyne}: not a KITTI .bin scan (float32 x 4 per point)")
        points = raw.reshape(-1, 4)
        if a.kitti_calib is not None:
            first = next(iter(images.values()))
            rig = rig_from_kitti(a.kitti_calib, image_size=(first.shape[1], first.shape[0]))
        else:
            rig = load_rig_model(a.rig)
        for spec in a.rotate:
            try:
                cam, axis, deg = spec.split(":")
                ax = [0.0, 0.0, 0.0]
                ax["xyz".index(axis)] = float(deg)
            except ValueError:
                raise CalibrationError(f"--rotate {spec!r}: use CAMERA:AXIS:DEG, AXIS one of x, y, z") from None
            rig = rig.with_camera_pose(cam, perturbed(rig._camera(cam).T_base_camera, axis_deg=tuple(ax)))
        result = check_rig(rig, points, images, lidar=a.lidar, stereo=not a.no_stereo)
    except (CalibrationError, OSError, ValueError) as exc:
        print(f"calib check: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a core-only install: OpenCV comes with the vision extra
        print(f"calib check needs OpenCV ({exc}): pip install perception-nodes[vision]", file=sys.stderr)
        return 2
    for name, c in result.cameras.items():
        print(f"{name}: {c.verdict}  F={c.statistic:.3f}  J={c.score:.4f}  edge points={c.edge_points}  - {c.reason}")
    for s in result.stereo:
        print(f"stereo {s.left}/{s.right}: {s.verdict}  |dy|={s.median_abs_dy_px:.2f} px  "
              f"bias={s.disparity_bias_px:+.2f} px  matches={s.matches}  - {s.reason}")
    print(result.to_json())
    return 1 if result.worst() not in (OK, "WARN") else 0
