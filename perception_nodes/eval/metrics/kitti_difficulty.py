"""KITTI difficulty levels (easy / moderate / hard) of labelled boxes.

KITTI's object benchmark (Geiger, Lenz & Urtasun, CVPR 2012; thresholds as in the devkit and in every
re-implementation of its evaluation, e.g. OpenPCDet's ``kitti_object_eval_python``) grades each label
by three numbers written in ``label_2``:

=========  ======================  ==================  ==================
level      min 2D box height (px)  max occlusion       max truncation
=========  ======================  ==================  ==================
easy       40                      0 (fully visible)   0.15
moderate   25                      1 (partly occluded) 0.30
hard       25                      2 (largely occl.)   0.50
=========  ======================  ==================  ==================

The levels are cumulative: a box scored at *moderate* is every box that is easy or moderate. A labelled
box of the evaluated class that fails a level is not dropped but *ignored* for that level (it can absorb
one detection without making it a false positive, and is never a false negative). The devkit's test is
``occlusion > max_occ or truncation > max_trunc or height <= min_height`` (note ``<=`` for the height of
ground truth, but ``<`` for detections, whose 2D box height makes them ignored when below the minimum).

Where the numbers live: ``Box3D.occlusion`` and ``Box3D.truncation`` (read by
:func:`perception_nodes.bags.kitti.read_labels`) and the 2D box ``Box3D.extras["bbox2d"]`` =
``(left, top, right, bottom)`` in image pixels. Ground truth without a 2D box (generated scenarios, and
bags: ``perception_interfaces/Detection3D`` has no 2D box field) has no difficulty; it is scored as one
level, ``"all"``, with no difficulty filtering -- unless :mod:`perception_nodes.eval.generated_difficulty`
grades it first (a virtual camera's 2D box; the generator's occlusion truth, else the scan's), as ``lidar-eval`` and
``evaluate``'s ``kitti_graded`` section do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from perception_nodes.boxes import Box3D

__all__ = [
    "DIFFICULTY_LEVELS",
    "KITTI_MAX_OCCLUSION",
    "KITTI_MAX_TRUNCATION",
    "KITTI_MIN_HEIGHT_PX",
    "Difficulty",
    "bbox_height",
    "gt_fails_level",
    "has_difficulty_fields",
    "kitti_difficulty",
    "pred_below_min_height",
]

Difficulty = Literal["easy", "moderate", "hard"]
DIFFICULTY_LEVELS: tuple[Difficulty, ...] = ("easy", "moderate", "hard")
KITTI_MIN_HEIGHT_PX: dict[str, float] = {"easy": 40.0, "moderate": 25.0, "hard": 25.0}
KITTI_MAX_OCCLUSION: dict[str, int] = {"easy": 0, "moderate": 1, "hard": 2}
KITTI_MAX_TRUNCATION: dict[str, float] = {"easy": 0.15, "moderate": 0.3, "hard": 0.5}


def _level(level: str) -> str:
    if level not in KITTI_MIN_HEIGHT_PX:
        raise ValueError(f"difficulty must be one of {DIFFICULTY_LEVELS}, got {level!r}")
    return level


def bbox_height(box: Box3D) -> float | None:
    """Height in pixels of the box's 2D image box (``extras["bbox2d"]``), or None when it has none."""
    b = box.extras.get("bbox2d")
    if b is None:
        return None
    if len(b) != 4:
        raise ValueError(f"bbox2d must be (left, top, right, bottom), got {b!r}")
    return float(b[3]) - float(b[1])


def has_difficulty_fields(box: Box3D) -> bool:
    """True when the box carries what a difficulty needs: a 2D box and a known occlusion state."""
    return bbox_height(box) is not None and box.occlusion >= 0


def gt_fails_level(box: Box3D, level: str) -> bool:
    """True when a ground-truth box is too small, occluded or truncated for ``level`` (devkit rule)."""
    level = _level(level)
    h = bbox_height(box)
    if h is None or box.occlusion < 0:
        raise ValueError(f"{box.label} box has no 2D box / occlusion: KITTI difficulty needs both "
                         "(score such ground truth with difficulty=None)")
    return (box.occlusion > KITTI_MAX_OCCLUSION[level] or box.truncation > KITTI_MAX_TRUNCATION[level]
            or h <= KITTI_MIN_HEIGHT_PX[level])


def pred_below_min_height(box: Box3D, level: str) -> bool:
    """Detection rule: ignored at ``level`` when its 2D box is lower than the minimum (False without one)."""
    h = bbox_height(box)
    return h is not None and abs(h) < KITTI_MIN_HEIGHT_PX[_level(level)]


def kitti_difficulty(box: Box3D, levels: Sequence[str] = DIFFICULTY_LEVELS) -> str | None:
    """The easiest level the box passes (``"easy"``, ``"moderate"``, ``"hard"``), or None if it passes
    none (KITTI's "ignored at every level") or has no 2D box / occlusion."""
    if not has_difficulty_fields(box):
        return None
    for level in levels:
        if not gt_fails_level(box, level):
            return level
    return None
