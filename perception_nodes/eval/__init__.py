"""Offline evaluation of the stack's outputs: detection, occupancy, calibration, uncertainty and control.

The metrics live in :mod:`perception_nodes.eval.metrics` (one module per family, each citing the
definition it implements); the public API is re-exported here.
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
    NuScenesClassResult,
    NuScenesResult,
    PRCurve,
    kitti_ap,
    nuscenes_map,
)
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
    "miscalibration_area",
    "nig_nll",
    "nig_predictive",
    "nuscenes_map",
    "occupancy_iou",
    "occupancy_scores",
    "pairwise_iou",
    "regression_calibration_curve",
    "reliability_diagram",
    "roc_curve",
    "student_t_nll",
]
