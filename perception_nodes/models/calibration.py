"""Post-hoc calibration of the LiDAR branch's evidential outputs (fitted on validation scenes, applied in decoding).

Why: the network's Dirichlet class evidence and its Normal-Inverse-Gamma (NIG) box variances are trained
with regularised evidential losses, and nothing makes them *calibrated*: the published score need not be
the probability that a detection is right, and the published centre covariance leaves out the error of
choosing the peak cell (it is the variance of the sub-cell offset only). Both are fixed here after
training, without touching the network, by maps fitted on a validation split (seeds disjoint from training
and from the held-out evaluation) and stored in the weights' sidecar (``model.json``, key ``calibration``;
absent = identity, so older weights folders load unchanged).

The maps (all identity at their defaults):

* **foreground prior** ``f`` (fitted by ``lidar-eval --fit-calibration`` since 3 Dec 2026): the Dirichlet
  prior's pseudo-count of each foreground class, ``f``, with the background's raised to ``1 + K (1 - f)``
  so the total prior mass stays ``K + 1``; i.e. ``alpha'_k = alpha_k - 1 + f`` (foreground),
  ``alpha'_bg = alpha_bg + K (1 - f)``. This is subjective logic's projected probability ``b_k + a_k u``
  with base rate ``a_k = f / (K + 1)`` instead of the uniform ``1 / (K + 1)``: belief ``b`` and vacuity
  ``u = (K + 1) / S`` are unchanged (``S`` is), only what the *uncommitted* mass means moves. Why: a cell
  with no evidence scored ``1 / (K + 1)`` = 0.25 for "car"; on a sparse scene (the motorway) the head then
  offers dozens of evidence-free peaks per scan at that score, nearly all wrong, and the score ECE there
  stayed 0.16 after Platt scaling. With ``f`` < 1 such a peak scores ``platt(f / (K + 1))``. Peaks are still
  picked on the uncalibrated map (the same boxes), but the map is not monotone in the old score (a cell
  with more vacuity loses more), so the ranking of boxes and AP can change.

* **score map** (what ``lidar-eval --fit-calibration`` fits for the class evidence): Platt scaling of the
  Dirichlet expected probabilities, ``p' = sigmoid(a logit(p) + b)`` with ``a > 0``, applied to every
  foreground class probability of a box (rescaled to sum to at most 1; background is the rest). The fit
  either anchors it at the evidence-free score (the Dirichlet prior mean ``1 / (K + 1)``, or ``f / (K + 1)``
  with the prior), ``b = logit(1 / (K + 1)) (1 - a)``, so a cell with no evidence keeps that score, or, since
  3 Dec 2026 (sixth session), leaves ``b`` free where that lowers the validation NLL and does not *raise*
  the evidence-free score (:func:`fit_prior_and_platt`, ``free_intercept``; an unanchored map that raised it
  -- the base weights': 0.25 -> 0.37 -- would let evidence-free peaks pass the node's ``score_threshold``
  0.3, and stays excluded; the v3 weights' free map moves 0.25 to 0.16). It is monotone and the same for
  every class, so the max-pool peaks are kept; the ranking of boxes is kept too except where a row's mapped
  foreground probabilities sum above 1 and are divided by their sum (a box with a strong second class then
  scores lower than one with the same raw score and a weak second class), which moved AP by up to 0.007 in
  the evaluation; the fit uses the own-class map without that rescaling. Why the free intercept: the anchor
  held the low-score boxes near their raw score although on validation they are right less often than
  that. The score threshold applies to the calibrated score, so boxes whose calibrated score falls below it
  are no longer decoded (the low end of the precision-recall curve). ``a`` (and a free ``b``) minimise the
  binary NLL of "the detection is right" over the validation detections (:func:`fit_platt`).
* **evidence scale** ``s > 0`` (supported and fitted for the record, not used by default: measured worse,
  see docs/lidar_branch.md): ``alpha' = 1 + s (alpha - 1)`` for every class and background, i.e. the
  evidence ``e = alpha - 1`` is multiplied by ``s`` (the Dirichlet analogue of temperature scaling).
  Scores ``alpha'_k / S'`` and vacuity ``(K + 1) / S'`` follow; the score of a cell is *not* a function of
  its old score alone (it depends on how much evidence the cell has), so ranking between boxes, and with
  it AP, can change. :func:`fit_evidence_scale` minimises the same NLL as :func:`fit_platt`.
* **variance scales** ``c_xy``, ``c_z``, ``c_yaw``: the published variances of the centre (x and y), of z
  and of yaw are multiplied by them (yaw then capped at the variance of a uniform angle, as in decoding).
  Each is fitted so that the central 90 % Gaussian interval ``+- 1.645 sqrt(c var)`` of the *decoded*
  detection (peak cell + offset, matched to ground truth) covers 90 % of the validation errors
  (:func:`fit_variance_scale`: the 0.9 quantile of ``err^2 / var`` divided by ``1.645^2``). A common scale
  keeps the ranking of boxes by uncertainty (AUROC) unchanged.
* **per-class variance scales** ``class_variance_scales`` (optional, since 5 Dec 2026): ``{class: [c_xy, c_z,
  c_yaw]}`` replacing the three scales above for the boxes of that class, fitted the same way on that class's
  right detections where it has at least :data:`MIN_CLASS_VARIANCE_FIT` of them. Why: the box refinement and
  the learned box head correct car boxes only, so one pooled scale is a compromise between cars (now covered
  too often) and pedestrians and cyclists (too rarely), and a scene of cars only (a motorway) inherits the
  cars' excess.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DetectionCalibration", "binary_nll", "fit_evidence_scale", "fit_platt", "fit_prior_and_platt",
           "fit_variance_scale", "gaussian_z", "platt", "prior_score", "scaled_score"]

#: the sidecar key
SIDECAR_KEY = "calibration"
#: right validation detections a class needs for its own variance scales
MIN_CLASS_VARIANCE_FIT = 50


@dataclass(frozen=True)
class DetectionCalibration:
    """The fitted maps (module doc); the default is the identity."""

    evidence_scale: float = 1.0
    foreground_prior: float = 1.0
    score_logit_scale: float = 1.0
    score_logit_bias: float = 0.0
    centre_variance_scale: float = 1.0
    z_variance_scale: float = 1.0
    yaw_variance_scale: float = 1.0
    #: class name -> (c_xy, c_z, c_yaw) for that class's boxes instead of the three scales above (module doc)
    class_variance_scales: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    #: provenance and the validation numbers of the fit (free-form; not used to decode)
    fitted: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("evidence_scale", "score_logit_scale", "centre_variance_scale", "z_variance_scale", "yaw_variance_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"calibration {name} must be a finite number > 0, got {v!r}")
        if not (isinstance(self.foreground_prior, (int, float)) and 0.0 < self.foreground_prior <= 1.0):
            raise ValueError(f"calibration foreground_prior must lie in (0, 1], got {self.foreground_prior!r}")
        if not (isinstance(self.score_logit_bias, (int, float)) and math.isfinite(self.score_logit_bias)):
            raise ValueError(f"calibration score_logit_bias must be finite, got {self.score_logit_bias!r}")
        if not isinstance(self.class_variance_scales, Mapping):
            raise ValueError("calibration class_variance_scales must map class names to [c_xy, c_z, c_yaw]")
        for name, v in self.class_variance_scales.items():
            ok = isinstance(name, str) and isinstance(v, (list, tuple)) and len(v) == 3
            if not ok or not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in v):
                raise ValueError(f"calibration class_variance_scales[{name!r}] must be three finite numbers > 0, got {v!r}")
        object.__setattr__(self, "class_variance_scales",
                           {str(k): tuple(float(x) for x in v) for k, v in self.class_variance_scales.items()})

    def variance_scales(self, name: str) -> tuple[float, float, float]:
        """(c_xy, c_z, c_yaw) of the boxes of class ``name``."""
        return self.class_variance_scales.get(name, (self.centre_variance_scale, self.z_variance_scale,
                                                     self.yaw_variance_scale))

    @property
    def is_identity(self) -> bool:
        return (self.evidence_scale, self.foreground_prior, self.score_logit_scale, self.score_logit_bias,
                self.centre_variance_scale, self.z_variance_scale, self.yaw_variance_scale) == (1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0) \
            and all(v == (1.0, 1.0, 1.0) for v in self.class_variance_scales.values())

    @property
    def maps_scores(self) -> bool:
        """Whether the published class probabilities differ from the (evidence-scaled) Dirichlet means."""
        return (self.score_logit_scale, self.score_logit_bias) != (1.0, 0.0) or self.foreground_prior != 1.0

    @property
    def monotone(self) -> bool:
        """Whether the score map is a function of the old score alone (then it keeps the ranking)."""
        return self.foreground_prior == 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fitted"] = dict(self.fitted)
        if d["class_variance_scales"]:
            d["class_variance_scales"] = {k: list(v) for k, v in self.class_variance_scales.items()}
        else:
            del d["class_variance_scales"]  # sidecars without it read as before
        return d

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> "DetectionCalibration":
        """From the sidecar entry; ``None`` / empty gives the identity. Unknown keys are an error (a typo
        must not silently mean "identity")."""
        if not m:
            return cls()
        known = {"evidence_scale", "foreground_prior", "score_logit_scale", "score_logit_bias", "centre_variance_scale",
                 "z_variance_scale", "yaw_variance_scale", "class_variance_scales", "fitted"}
        extra = sorted(set(m) - known)
        if extra:
            raise ValueError(f"unknown calibration keys {extra} (known: {sorted(known)})")
        kw = {k: float(v) for k, v in m.items() if k not in ("fitted", "class_variance_scales")}
        per_class = m.get("class_variance_scales") or {}
        if not isinstance(per_class, Mapping):
            raise ValueError("calibration class_variance_scales must map class names to [c_xy, c_z, c_yaw]")
        return cls(**kw, class_variance_scales={k: tuple(v) if isinstance(v, (list, tuple)) else v
                                                for k, v in per_class.items()}, fitted=dict(m.get("fitted") or {}))

    @classmethod
    def from_sidecar(cls, side: Mapping[str, Any]) -> "DetectionCalibration":
        """The calibration stored in a weights sidecar (identity when the sidecar has none)."""
        return cls.from_mapping(side.get(SIDECAR_KEY))

    def summary(self) -> str:
        score = (f"score sigmoid({self.score_logit_scale:.3g} logit p {self.score_logit_bias:+.3g}), "
                 if self.maps_scores else "")
        evidence = f"evidence x{self.evidence_scale:.3g}, " if self.evidence_scale != 1.0 else ""
        prior = f"foreground prior {self.foreground_prior:.3g}, " if self.foreground_prior != 1.0 else ""
        per_class = "".join(f"; {k}: centre var x{v[0]:.3g}, z var x{v[1]:.3g}, yaw var x{v[2]:.3g}"
                            for k, v in sorted(self.class_variance_scales.items()))
        return (f"{prior}{score}{evidence}centre var x{self.centre_variance_scale:.3g}, "
                f"z var x{self.z_variance_scale:.3g}, yaw var x{self.yaw_variance_scale:.3g}{per_class}")

    # --- application (torch tensors in decoding) ---------------------------------------------------
    def apply_alpha(self, alpha: Any) -> Any:
        """``1 + s (alpha - 1)`` (works on torch tensors and numpy arrays)."""
        if self.evidence_scale == 1.0:
            return alpha
        return 1.0 + self.evidence_scale * (alpha - 1.0)

    def probabilities(self, alpha_rows: Any) -> Any:
        """Published class probabilities ``[N, K + 1]`` (background last) of Dirichlet rows ``alpha_rows``
        ``[N, K + 1]`` (torch; already evidence-scaled): the foreground prior applied, the means taken,
        the score map on the foreground, background = the rest."""
        import torch

        a = alpha_rows.float()
        k = a.shape[1] - 1
        if self.foreground_prior != 1.0:
            shift = torch.full((k + 1,), self.foreground_prior - 1.0, dtype=a.dtype, device=a.device)
            shift[k] = k * (1.0 - self.foreground_prior)
            a = a + shift
        p = a / a.sum(1, keepdim=True)
        fg = self.apply_probabilities(p[:, :k])
        return torch.cat([fg, (1.0 - fg.sum(1, keepdim=True)).clamp_min(0.0)], 1)

    def evidence_free_score(self, k: int) -> float:
        """The published score of a cell without evidence (``K`` foreground classes)."""
        return float(self.map_score_threshold(self.foreground_prior / (k + 1)))

    def map_score_threshold(self, threshold: float) -> float:
        """The Platt image of a raw score ``threshold`` (monotone): decoding at this threshold with a Platt-only
        calibration keeps about the boxes decoding at ``threshold`` without it keeps (up to rows whose mapped
        probabilities are rescaled to sum to 1). The evaluation now thresholds the raw score instead
        (``threshold_on_raw_score``), which keeps exactly the same boxes for any map."""
        if (self.score_logit_scale, self.score_logit_bias) == (1.0, 0.0):
            return float(threshold)
        return float(platt(np.array([threshold]), self.score_logit_scale, self.score_logit_bias)[0])

    def apply_probabilities(self, fg: Any) -> Any:
        """The Platt score map on foreground probabilities ``[..., K]`` (torch): each through :func:`platt`, then
        rows summing above 1 are divided by their sum (background = the rest stays >= 0). The foreground
        prior is not part of it (it needs the Dirichlet parameters: :meth:`probabilities`)."""
        if (self.score_logit_scale, self.score_logit_bias) == (1.0, 0.0):
            return fg
        import torch

        q = platt(fg, self.score_logit_scale, self.score_logit_bias)
        total = q.sum(-1, keepdim=True)
        return torch.where(total > 1.0, q / total.clamp_min(1e-12), q)


def platt(p: Any, a: float, b: float, eps: float = 1e-6) -> Any:
    """``sigmoid(a logit(p) + b)`` (numpy arrays or torch tensors), ``p`` clipped to ``[eps, 1 - eps]``."""
    if isinstance(p, np.ndarray) or np.isscalar(p):
        q = np.clip(np.asarray(p, np.float64), eps, 1.0 - eps)
        with np.errstate(over="ignore"):  # exp overflow -> inf -> 0: the right limit
            return 1.0 / (1.0 + np.exp(-(a * np.log(q / (1.0 - q)) + b)))
    import torch

    q = p.clamp(eps, 1.0 - eps)
    return torch.sigmoid(a * torch.log(q / (1.0 - q)) + b)


def fit_platt(p: ArrayLike, right: ArrayLike, *, anchor: float | None = None,
              iterations: int = 100) -> tuple[float, float, dict[str, float]]:
    """``(a, b)`` of :func:`platt` minimising the binary NLL of ``right`` given scores ``p`` (logistic
    regression on ``logit p`` by Newton's method, with a tiny ridge for stability).

    With ``anchor`` (a probability, e.g. the Dirichlet prior mean ``1 / (K + 1)``) the map keeps that point
    fixed, ``b = logit(anchor) (1 - a)``, and only ``a`` is fitted: a cell without evidence keeps the score
    it had. ``a`` is kept > 0 (a non-positive slope would reverse the ranking: then the identity is
    returned). Returns ``(a, b, {"nll_before", "nll_after", "n"})``."""
    pp = np.clip(np.asarray(p, np.float64).reshape(-1), 1e-6, 1.0 - 1e-6)
    y = np.asarray(right, bool).reshape(-1).astype(np.float64)
    if pp.shape != y.shape:
        raise ValueError("p and right must have the same length")
    before = binary_nll(pp, y > 0.5)
    identity = (1.0, 0.0, {"nll_before": before, "nll_after": before, "n": float(pp.size)})
    if pp.size == 0 or y.all() or not y.any():
        return identity
    logit = np.log(pp / (1.0 - pp))
    if anchor is None:
        x, offset, w = np.stack([logit, np.ones_like(pp)], 1), np.zeros_like(pp), np.array([1.0, 0.0])
    else:
        if not 0.0 < anchor < 1.0:
            raise ValueError(f"anchor must lie in (0, 1), got {anchor}")
        l0 = math.log(anchor / (1.0 - anchor))
        x, offset, w = (logit - l0)[:, None], np.full_like(pp, l0), np.array([1.0])
    ridge = 1e-9 * np.eye(x.shape[1])
    for _ in range(iterations):
        with np.errstate(over="ignore"):  # exp overflow -> q = 0: the right limit
            q = 1.0 / (1.0 + np.exp(-(x @ w + offset)))
        grad = x.T @ (q - y)
        hess = (x * (q * (1.0 - q))[:, None]).T @ x + ridge
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.max(np.abs(step)) < 1e-10:
            break
    a = float(w[0])
    b = float(w[1]) if anchor is None else float(offset[0] * (1.0 - a))
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        return identity
    return a, b, {"nll_before": before, "nll_after": binary_nll(platt(pp, a, b), y > 0.5), "n": float(pp.size)}


def gaussian_z(level: float) -> float:
    """Half-width in standard deviations of the central ``level`` interval of a normal distribution."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    from statistics import NormalDist

    return float(NormalDist().inv_cdf(0.5 + level / 2.0))


def prior_score(alpha: ArrayLike, label: ArrayLike, foreground_prior: float) -> np.ndarray:
    """Score of the detected class of rows ``alpha`` ``[N, K + 1]`` under the foreground prior ``f``
    (:class:`DetectionCalibration`): ``(alpha_label - 1 + f) / S`` (``S`` unchanged)."""
    a = np.asarray(alpha, np.float64)
    lab = np.asarray(label, np.int64)
    return (a[np.arange(len(a)), lab] - 1.0 + foreground_prior) / a.sum(1)


def fit_prior_and_platt(alpha: ArrayLike, label: ArrayLike, right: ArrayLike, *,
                        grid: ArrayLike = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                        free_intercept: bool = False, prior_tie: float = 1e-3) -> tuple[float, float, float, dict[str, Any]]:
    """``(f, a, b, info)``: the foreground prior ``f`` (from ``grid``) and, for each, the Platt map anchored at
    the evidence-free score ``f / (K + 1)`` (:func:`fit_platt`), jointly minimising the binary NLL of
    ``right`` over a fixed set of detections (their Dirichlet rows ``alpha``, detected ``label``).

    ``free_intercept``: for each ``f`` also fit the map with ``b`` free (unanchored) and admit it when it
    does not raise the evidence-free score (``platt(f / (K + 1)) <= f / (K + 1)``): the data may say that
    peaks without evidence are right less often than the prior mean, never that they are right more often
    (that would publish evidence-free peaks). Why: the anchor kept an evidence-free cell at exactly
    ``f / (K + 1)`` and with it the low-score boxes near their raw score, which on the validation scenes are
    right less often than that (the unanchored map has the lower validation NLL); an unanchored map that
    raised the evidence-free score (the base weights': 0.25 -> 0.37, above the node's threshold 0.3) stays
    excluded. The lowest NLL over every admitted (f, map) wins, except that ``f = 1`` (no prior: a monotone
    map that keeps the ranking of boxes) is kept unless another ``f`` lowers the NLL by more than
    ``prior_tie`` nats (a near tie must not cost monotonicity).

    ``info``: the NLL before, after, per grid value (the anchored map's; ``free_per_prior`` the unanchored
    one's NLL and whether it was admitted) and ``anchored`` (which map won)."""
    a = np.asarray(alpha, np.float64)
    y = np.asarray(right, bool)
    k1 = a.shape[1]
    per: dict[str, float] = {}
    per_free: dict[str, dict[str, Any]] = {}
    cands: list[tuple[float, float, float, float, bool]] = []  # (f, a, b, nll, anchored)
    for f in grid:
        p = prior_score(a, label, float(f))
        sa, sb, inf = fit_platt(p, y, anchor=float(f) / k1)
        per[f"{float(f):g}"] = float(inf["nll_after"])
        cands.append((float(f), sa, sb, float(inf["nll_after"]), True))
        if free_intercept:
            fa, fb, finf = fit_platt(p, y)
            e0 = float(f) / k1
            ok = (fa, fb) != (1.0, 0.0) and float(platt(np.array([e0]), fa, fb)[0]) <= e0
            per_free[f"{float(f):g}"] = {"nll": float(finf["nll_after"]), "admitted": bool(ok)}
            if ok:
                cands.append((float(f), fa, fb, float(finf["nll_after"]), False))
    best = min(cands, key=lambda c: c[3]) if cands else (1.0, 1.0, 0.0, float("inf"), True)
    at_one = [c for c in cands if c[0] == 1.0]
    if at_one:
        one = min(at_one, key=lambda c: c[3])
        if one[3] <= best[3] + prior_tie:
            best = one
    before = binary_nll(prior_score(a, label, 1.0), y)
    info: dict[str, Any] = {"nll_before": before, "nll_after": best[3], "n": float(len(a)), "nll_per_prior": per,
                            "anchored": best[4], "prior_tie": prior_tie}
    if free_intercept:
        info["free_per_prior"] = per_free
    return best[0], best[1], best[2], info


def scaled_score(alpha: ArrayLike, label: ArrayLike, scale: float) -> np.ndarray:
    """Score ``alpha'_label / S'`` of rows ``alpha`` ``[N, K + 1]`` after scaling the evidence by ``scale``."""
    a = np.asarray(alpha, np.float64)
    lab = np.asarray(label, np.int64)
    e = np.clip(a - 1.0, 0.0, None)
    k1 = a.shape[1]
    return (1.0 + scale * e[np.arange(len(a)), lab]) / (k1 + scale * e.sum(1))


def binary_nll(p: ArrayLike, y: ArrayLike, eps: float = 1e-6) -> float:
    """Mean negative log-likelihood of outcomes ``y`` (bool) under probabilities ``p`` (clipped to eps)."""
    pp = np.clip(np.asarray(p, np.float64), eps, 1.0 - eps)
    yy = np.asarray(y, bool)
    if pp.size == 0:
        return float("nan")
    return float(-np.mean(np.where(yy, np.log(pp), np.log1p(-pp))))


def fit_evidence_scale(alpha: ArrayLike, label: ArrayLike, right: ArrayLike, *, log_bounds: tuple[float, float] = (-4.0, 4.0),
                       grid: int = 161) -> tuple[float, dict[str, float]]:
    """The evidence scale ``s`` minimising :func:`binary_nll` of ``right`` under the scaled scores.

    ``alpha`` ``[N, K + 1]`` are the Dirichlet parameters at the detections' cells (background last),
    ``label`` the detected class, ``right`` whether the detection matched ground truth. The set of
    detections is held fixed (those decoded without calibration), so the objective compares like with
    like. Search: a grid over ``log s`` in ``log_bounds``, then golden-section refinement around the best
    grid point (no SciPy). Returns ``(s, {"nll_before", "nll_after", "n"})``.
    """
    a = np.asarray(alpha, np.float64)
    lab = np.asarray(label, np.int64)
    y = np.asarray(right, bool)
    if a.ndim != 2 or len(a) != len(lab) or len(a) != len(y):
        raise ValueError("alpha [N, K+1], label [N] and right [N] must agree")
    if len(a) == 0 or y.all() or not y.any():
        return 1.0, {"nll_before": binary_nll(scaled_score(a, lab, 1.0), y), "nll_after": float("nan"), "n": float(len(a))}

    def f(log_s: float) -> float:
        return binary_nll(scaled_score(a, lab, math.exp(log_s)), y)

    xs = np.linspace(log_bounds[0], log_bounds[1], grid)
    vals = np.array([f(x) for x in xs])
    i = int(np.argmin(vals))
    lo, hi = xs[max(i - 1, 0)], xs[min(i + 1, grid - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = f(d)
    best = (lo + hi) / 2.0
    if f(best) > vals[i]:
        best = xs[i]
    s = math.exp(best)
    return s, {"nll_before": f(0.0), "nll_after": f(best), "n": float(len(a))}


def fit_variance_scale(err: ArrayLike, var: ArrayLike, *, level: float = 0.9) -> tuple[float, dict[str, float]]:
    """The scale ``c`` with which ``|err| <= z sqrt(c var)`` holds for a fraction ``level`` of the samples.

    ``z`` = :func:`gaussian_z` ``(level)``; ``c = quantile_level(err^2 / var) / z^2`` (linear interpolation
    of the empirical quantile). Samples with a non-finite or non-positive variance are left out. Returns
    ``(c, {"coverage_before", "n"})`` (the coverage at ``c`` is ``level`` up to ties and interpolation).
    """
    e = np.asarray(err, np.float64).reshape(-1)
    v = np.asarray(var, np.float64).reshape(-1)
    if e.shape != v.shape:
        raise ValueError("err and var must have the same length")
    ok = np.isfinite(e) & np.isfinite(v) & (v > 0)
    e, v = e[ok], v[ok]
    if e.size == 0:
        return 1.0, {"coverage_before": float("nan"), "n": 0.0}
    z = gaussian_z(level)
    r = e * e / v
    c = float(np.quantile(r, level)) / (z * z)
    before = float(np.mean(r <= z * z))
    return (c if c > 0 and math.isfinite(c) else 1.0), {"coverage_before": before, "n": float(e.size)}
