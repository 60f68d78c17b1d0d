"""Error of predicted control (path curvature, 1/m) against the reference, NaN-aware.

Curvature regression (e.g. Amini et al. 2020's end-to-end steering, Liu & Amini ICRA 2021) is scored
by mean absolute error and RMSE over valid frames. A NaN in either the prediction (no output that
frame) or the reference (no ground truth) removes the pair from the errors; how many were removed is
reported, because a model that abstains often can otherwise look good.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["CurvatureError", "curvature_error"]


class CurvatureError(TypedDict):
    mae: float
    rmse: float
    max_abs: float
    n: int
    n_nan: int


def curvature_error(pred: ArrayLike, gt: ArrayLike) -> CurvatureError:
    """MAE, RMSE and max |error| over pairs where both values are finite.

    ``n`` = pairs scored, ``n_nan`` = pairs skipped because either side is NaN. Infinite values are an
    error (a diverging output should not be silently dropped). With no valid pair the errors are NaN.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    g = np.asarray(gt, dtype=np.float64).ravel()
    if p.shape != g.shape:
        raise ValueError(f"pred ({p.size}) and gt ({g.size}) must have the same number of values")
    if np.any(np.isinf(p)) or np.any(np.isinf(g)):
        raise ValueError("infinite curvature values")
    valid = ~(np.isnan(p) | np.isnan(g))
    n = int(valid.sum())
    if n == 0:
        nan = float("nan")
        return CurvatureError(mae=nan, rmse=nan, max_abs=nan, n=0, n_nan=int(p.size))
    err = p[valid] - g[valid]
    return CurvatureError(mae=float(np.mean(np.abs(err))), rmse=float(np.sqrt(np.mean(err * err))),
                          max_abs=float(np.max(np.abs(err))), n=n, n_nan=int(p.size - n))
