"""Evaluation metrics, each computed as the field defines it (see each module's docstring for the source).

* :mod:`.boxes_iou` — exact rotated BEV / 3D IoU of boxes.
* :mod:`.detection` — KITTI AP (R40 / R11) and AOS as the KITTI devkit computes them, nuScenes mAP / TP
  errors / adapted NDS; :mod:`.kitti_difficulty` — KITTI's easy / moderate / hard levels.
* :mod:`.occupancy` — occupancy IoU, precision/recall/F1, Chamfer distance.
* :mod:`.calibration` — ECE (binary, top-label, classwise) and reliability diagrams.
* :mod:`.regression` — NIG predictive Student-t: NLL, interval coverage, calibration curve, uncertainty split.
* :mod:`.ood` — AUROC (exact Mann–Whitney), ROC curve, FPR at TPR.
* :mod:`.control` — curvature error.
"""

from perception_nodes.eval.metrics.boxes_iou import bev_iou, box_iou, boxes_to_array, iou_3d, pairwise_iou
from perception_nodes.eval.metrics.calibration import (
    ECEResult,
    classwise_ece,
    expected_calibration_error,
    expected_calibration_error_multiclass,
    reliability_diagram,
)
from perception_nodes.eval.metrics.control import CurvatureError, curvature_error
from perception_nodes.eval.metrics.detection import (
    KITTI_IGNORE_LABELS,
    KITTI_IOU_THRESHOLDS,
    NUSCENES_DIST_THRESHOLDS,
    APResult,
    KittiFrame,
    NuScenesClassResult,
    NuScenesResult,
    PRCurve,
    kitti_ap,
    kitti_eval_frames,
    kitti_thresholds,
    nuscenes_map,
    observation_angle,
)
from perception_nodes.eval.metrics.kitti_difficulty import DIFFICULTY_LEVELS, kitti_difficulty
from perception_nodes.eval.metrics.occupancy import (
    ChamferResult,
    OccupancyScores,
    chamfer_distance,
    occupancy_iou,
    occupancy_scores,
)
from perception_nodes.eval.metrics.ood import RocCurve, auroc, fpr_at_tpr, roc_curve
from perception_nodes.eval.metrics.regression import (
    UncertaintySplit,
    aleatoric_epistemic,
    interval_coverage,
    miscalibration_area,
    nig_nll,
    nig_predictive,
    regression_calibration_curve,
    student_t_nll,
)

__all__ = [
    "KITTI_IGNORE_LABELS",
    "KITTI_IOU_THRESHOLDS",
    "NUSCENES_DIST_THRESHOLDS",
    "APResult",
    "DIFFICULTY_LEVELS",
    "KittiFrame",
    "ChamferResult",
    "CurvatureError",
    "ECEResult",
    "NuScenesClassResult",
    "NuScenesResult",
    "OccupancyScores",
    "PRCurve",
    "RocCurve",
    "UncertaintySplit",
    "aleatoric_epistemic",
    "auroc",
    "bev_iou",
    "box_iou",
    "boxes_to_array",
    "chamfer_distance",
    "classwise_ece",
    "curvature_error",
    "expected_calibration_error",
    "expected_calibration_error_multiclass",
    "fpr_at_tpr",
    "interval_coverage",
    "iou_3d",
    "kitti_ap",
    "kitti_difficulty",
    "kitti_eval_frames",
    "kitti_thresholds",
    "miscalibration_area",
    "nig_nll",
    "nig_predictive",
    "nuscenes_map",
    "observation_angle",
    "occupancy_iou",
    "occupancy_scores",
    "pairwise_iou",
    "regression_calibration_curve",
    "reliability_diagram",
    "roc_curve",
    "student_t_nll",
]
