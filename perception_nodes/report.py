"""``report.html`` for a replay: BEV occupancy and uncertainty with ground truth, latency histograms.

Pictures first: a person checks a grid by looking at it, and a latency distribution by its shape and
tail, not by a table. Images are written as PNG files next to the HTML.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from perception_nodes.codecs.detections import boxes_from_detections  # noqa: E402
from perception_nodes.evaluation import grid_array  # noqa: E402,F401  (re-exported for callers)

if TYPE_CHECKING:
    from perception_nodes.replay import ReplayResult


def _extent(msg: Any) -> list[float]:
    res, o = msg.info.resolution, msg.info.origin.position
    return [o.x, o.x + msg.info.width * res, o.y, o.y + msg.info.height * res]


def _bev_axes(ax: Any, title: str, ext: Any, gt: Any | None, dashed: bool = False) -> None:
    """The common dress of every BEV panel: title, axes in base_link, the ego, ground-truth boxes in blue."""
    ax.set_title(title)
    ax.set_xlabel("x [m] (base_link)")
    ax.set_ylabel("y [m]")
    ax.plot(0, 0, marker="^", color="cyan", markersize=8)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    if gt is not None:
        for box in boxes_from_detections(gt):
            c = np.vstack([box.corners_xy(), box.corners_xy()[:1]])
            ax.plot(c[:, 0], c[:, 1], color="deepskyblue", lw=0.7, ls="--" if dashed else "-", alpha=0.8)


def plot_bev(stamp: int, occ: Any, unc: Any, gt: Any | None, path: Path) -> None:
    """Side by side: occupancy probability (unknown grey) and vacuity, with ground-truth boxes."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 7), constrained_layout=True)
    prob = grid_array(occ).astype(np.float32)
    shown = np.ma.masked_less(prob, 0)
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="#b0b0b0")
    im0 = axes[0].imshow(shown, origin="lower", extent=_extent(occ), cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(im0, ax=axes[0], shrink=0.8, label="P(occupied) % (grey: unknown)")
    im1 = axes[1].imshow(grid_array(unc), origin="lower", extent=_extent(unc), cmap="magma", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(im1, ax=axes[1], shrink=0.8, label="vacuity % (100: no evidence)")
    for ax, title in zip(axes, ("occupancy", "uncertainty (vacuity)"), strict=True):
        _bev_axes(ax, f"{title} @ {stamp / 1e9:.1f} s", _extent(occ), gt)
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: probability level of the drawn centre ellipses (the level the evaluation scores coverage at)
ELLIPSE_LEVEL = 0.9
#: their Mahalanobis radius: sqrt(chi2_2(0.9)) = sqrt(-2 ln(1 - 0.9)) = 2.146, the 90 % region of a 2D
#: Gaussian over the centre (x, y)
ELLIPSE_SIGMA = math.sqrt(-2.0 * math.log(1.0 - ELLIPSE_LEVEL))
#: the ellipses' radii are drawn this many times larger than the level's region (stated in the legend and
#: caption): a calibrated 90 % centre region is ~0.25 m, a few pixels at the figure's 80 m scale
ELLIPSE_DRAW_SCALE = 4.0


def covariance_ellipse(cov_xy: np.ndarray, center: tuple[float, float], k: float = ELLIPSE_SIGMA,
                       n: int = 48) -> np.ndarray:
    """Points ``(n + 1, 2)`` of the ellipse ``{c + k L u : |u| = 1}`` with ``L L^T = cov_xy`` (closed)."""
    cov = np.asarray(cov_xy, dtype=np.float64).reshape(2, 2)
    vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    axes = vecs * np.sqrt(np.clip(vals, 0.0, None))
    t = np.linspace(0.0, 2.0 * np.pi, n + 1)
    return np.asarray(center, dtype=np.float64) + k * (np.stack([np.cos(t), np.sin(t)], 1) @ axes.T)


def _detection_boxes(det: Any) -> list[tuple[str, float, Any, np.ndarray, float]]:
    """(class, score, Box3D, 6x6 covariance, yaw std) per detection of a vision_msgs Detection3DArray."""
    from perception_nodes.boxes import Box3D

    out = []
    for d in det.detections:
        if not d.results:
            continue
        top = d.results[0]
        q = d.bbox.center.orientation
        yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
        p = d.bbox.center.position
        box = Box3D(label=top.hypothesis.class_id, center=(p.x, p.y, p.z), size=(d.bbox.size.x, d.bbox.size.y,
                    d.bbox.size.z), yaw=yaw, score=float(top.hypothesis.score))
        cov = np.asarray(top.pose.covariance, dtype=np.float64).reshape(6, 6)
        out.append((box.label, box.score, box, cov, math.sqrt(max(cov[5, 5], 0.0))))
    return out


def _place_labels(points: list[tuple[float, float]], extent: list[float], max_labels: int = 20,
                  box_frac: tuple[float, float] = (0.12, 0.05)) -> list[int]:
    """Indices of the points that get a text label: greedily in the given order (callers sort by score), a
    point whose label box (``box_frac`` of the view's width and height, to the upper right of the point)
    would overlap an already placed one is skipped, at most ``max_labels``: labels never overlap."""
    w = box_frac[0] * (extent[1] - extent[0])
    h = box_frac[1] * (extent[3] - extent[2])
    chosen: list[int] = []
    for i, (x, y) in enumerate(points):
        if not (extent[0] <= x <= extent[1] and extent[2] <= y <= extent[3]):
            continue
        if all(abs(x - points[j][0]) >= w or abs(y - points[j][1]) >= h for j in chosen):
            chosen.append(i)
            if len(chosen) >= max_labels:
                break
    return chosen


def plot_detections(stamp: int, det: Any, occ: Any | None, unc: Any | None, gt: Any | None, path: Path) -> None:
    """LiDAR branch output over the evidential grid: boxes, 90 % centre ellipses (from
    ``results[0].pose.covariance``, radii drawn :data:`ELLIPSE_DRAW_SCALE` times larger, as the legend
    says) and heading lines, on occupancy (left) and vacuity (right). Labels (class, score, yaw sigma)
    go to the highest-scoring boxes whose labels do not overlap (:func:`_place_labels`)."""
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(15, 7), constrained_layout=True)
    boxes = sorted(_detection_boxes(det), key=lambda b: -b[1])
    ext = _extent(occ) if occ is not None else [-40.0, 40.0, -40.0, 40.0]
    if occ is not None:
        shown = np.ma.masked_less(grid_array(occ).astype(np.float32), 0)
        cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="#b0b0b0")
        im0 = axes[0].imshow(shown, origin="lower", extent=_extent(occ), cmap=cmap, vmin=0, vmax=100,
                             interpolation="nearest")
        fig.colorbar(im0, ax=axes[0], shrink=0.8, label="P(occupied) % (grey: unknown)")
    if unc is not None:
        im1 = axes[1].imshow(grid_array(unc), origin="lower", extent=_extent(unc), cmap="magma", vmin=0, vmax=100,
                             interpolation="nearest")
        fig.colorbar(im1, ax=axes[1], shrink=0.8, label="vacuity % (100: no evidence)")
    colors = {"car": "#00c000", "pedestrian": "#ff3030", "cyclist": "#3060ff"}
    labelled = set(_place_labels([tuple(b[2].center[:2]) for b in boxes], ext))
    for ax, title in zip(axes, ("detections over occupancy", "detections over uncertainty (vacuity)"), strict=True):
        _bev_axes(ax, f"{title} @ {stamp / 1e9:.1f} s ({len(boxes)} boxes)", ext, gt, dashed=True)
        for i, (label, score, box, cov, yaw_std) in enumerate(boxes):
            color = colors.get(label.lower(), "white")
            c = np.vstack([box.corners_xy(), box.corners_xy()[:1]])
            ax.plot(c[:, 0], c[:, 1], color=color, lw=1.2)
            e = covariance_ellipse(cov[:2, :2], box.center[:2], k=ELLIPSE_SIGMA * ELLIPSE_DRAW_SCALE)
            ax.fill(e[:, 0], e[:, 1], color=color, alpha=0.25, lw=0)
            ax.plot(e[:, 0], e[:, 1], color="white" if ax is axes[1] else "black", lw=1.5, alpha=0.9)
            ax.plot(e[:, 0], e[:, 1], color=color, lw=0.8)
            head = np.asarray(box.center[:2]) + 0.5 * box.size[0] * np.array([math.cos(box.yaw), math.sin(box.yaw)])
            ax.plot([box.center[0], head[0]], [box.center[1], head[1]], color=color, lw=1.0)
            if i in labelled:
                ax.annotate(f"{label} {score:.2f}\nσyaw {math.degrees(yaw_std):.0f}°", box.center[:2], fontsize=6,
                            color="white", xytext=(4, 4), textcoords="offset points",
                            bbox={"boxstyle": "round,pad=0.15", "fc": color, "alpha": 0.6, "lw": 0})
        handles = [Line2D([], [], color=col, lw=1.2, label=name) for name, col in colors.items()]
        handles += [Line2D([], [], color="black", lw=1.2, marker="o", markerfacecolor="none", ls="none",
                           label=f"{ELLIPSE_LEVEL:.0%} centre region (published cov.), radii x{ELLIPSE_DRAW_SCALE:g}"),
                    Line2D([], [], color="deepskyblue", lw=0.8, ls="--", label="ground truth")]
        ax.legend(handles=handles, loc="lower left", fontsize=6, framealpha=0.7)
    if len(labelled) < len(boxes):
        fig.text(0.01, 0.005, f"labels on {len(labelled)} of {len(boxes)} boxes (highest scores, overlapping ones "
                 "left out)", fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(latency_series: dict[str, list[float]], path: Path, budgets: dict[str, float | None]) -> None:
    """One histogram per stage with its budget as a red line."""
    keys = sorted(latency_series)
    n = max(1, len(keys))
    cols = 3
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), constrained_layout=True, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        x = np.asarray(latency_series[key], dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size:
            ax.hist(x, bins=min(40, max(5, x.size // 3)), color="#4c72b0")
            for q, style in ((50, "-"), (99, "--")):
                ax.axvline(np.percentile(x, q), color="black", ls=style, lw=0.8)
        if budgets.get(key) is not None:
            ax.axvline(budgets[key], color="red", lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("ms (solid p50, dashed p99, red budget)", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else html.escape(str(v)))


def _occupancy_html(occ: dict) -> str:
    """Per-region table (all, range bands, fault-affected/unaffected): each score with its 95% interval
    and the baselines' scores; then the uncertainty AUROCs."""
    scores = ("iou", "precision", "recall", "brier", "nll", "ece")
    head = "".join(f"<th>{k}</th>" for k in scores)
    rows = []
    for name, r in occ["regions"].items():
        cells = "".join(
            f"<td>{_num(r[k]['value'])}<br><small>[{_num(r[k]['ci95'][0])}, {_num(r[k]['ci95'][1])}]<br>"
            f"base {_num(r[k]['base_rate_baseline'])}"
            + (f"<br>geom {_num(r[k]['geometric_baseline'])}" if r[k].get("geometric_baseline") is not None else "")
            + "</small></td>" for k in scores)
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{r['cells']}</td><td>{_num(r['unknown_share'])}</td>"
                    f"<td>{_num(r['occupied_share'])}</td>{cells}</tr>")
    unc = occ["uncertainty"]
    urows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_num(v['auroc_wrong_vs_right'])}</td>"
                    f"<td>{_num(v['auroc_fault_affected_vs_unaffected'])}</td></tr>"
                    for k, v in unc.items() if k != "mean_vacuity")
    limits = f"<p><b>Limits of this ground truth:</b> {html.escape(occ['limits'])}</p>" if occ.get("limits") else ""
    return (f"<h3>Occupancy per range band and fault region (every scored cell; unknown at P = 0.5; truth: "
            f"{html.escape(', '.join(occ['truth']))})</h3>{limits}"
            f"<p>value, [95% bootstrap interval over frames], the constant base-rate predictor's score "
            f"(base rate {_num(occ['base_rate'])})</p>"
            f"<table><tr><th>region</th><th>cells</th><th>unknown</th><th>occupied</th>{head}</tr>{''.join(rows)}</table>"
            f"<h3>Uncertainty tested against failure (AUROC)</h3><table><tr><th>output</th><th>wrong vs right cells"
            f"</th><th>fault-affected vs unaffected cells</th></tr>{urows}</table>")


def _metrics_html(metrics: dict | None) -> str:
    """Scores against the bag's ground truth (metrics.json): tables per range band and per class,
    the reliability diagram and PR curves."""
    if not metrics:
        return "<h2>Metrics</h2><p>the bag carries no ground truth: nothing to score</p>"
    join = metrics.get("join") or {}
    parts = [f"<h2>Metrics ({metrics.get('frames_scored', 0)} frames scored; metrics.json schema "
             f"{html.escape(str(metrics.get('schema_version')))})</h2>"
             f"<p>join: nearest stamp within {_num(join.get('tolerance_s'))} s; unmatched outputs "
             f"{join.get('unmatched_predictions')}, unmatched ground-truth frames {join.get('unmatched_ground_truth')}</p>"]
    occ = metrics.get("occupancy")
    if occ:
        parts.append("<p>Occupancy scores below are of the geometric grid (/perception/occupancy_grid); the fused "
                     "grid is scored against the same ground truth by <code>benchmarks/fusion_check.py</code> "
                     "(README, 'Evidence fusion').</p>")
        parts.append(_occupancy_html(occ))
        if occ.get("reliability_diagram"):
            parts.append(f'<img src="{occ["reliability_diagram"]}" width="520">')
    obj = metrics.get("objects")
    if obj:
        per = "".join(f"<tr><td>{html.escape(c)}</td><td>{v['total']}</td><td>{_num(v['mean_footprint_occupied'])}</td>"
                      f"<td>{v['half_or_more']}</td></tr>" for c, v in obj["per_class"].items())
        parts.append(f"<h3>Labelled objects within {obj['range_m']:g} m, per class</h3>"
                     f"<p>mean footprint read occupied {_num(obj['mean_footprint_occupied'])}; occupied cells outside "
                     f"every box {obj['occupied_cells_outside_boxes']}, of them free in the ground truth (false "
                     f"positives) {_num(obj['false_positive_cells'])}; box precision {_num(obj['box_precision'])}, "
                     f"F1 {_num(obj['f1'])}</p><table><tr><th>class</th><th>objects</th><th>mean footprint "
                     f"occupied</th><th>&ge; half occupied</th></tr>{per}</table>")
    det = metrics.get("detection")
    if det:
        parts.append(detection_metrics_html(det))
    return "\n".join(parts)


def _counts_text(d: Any) -> str:
    if isinstance(d, dict):
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"
    return html.escape(str(d))


def detection_metrics_html(det: dict) -> str:
    """metrics.json's ``detection`` section as tables: KITTI AP per class and level, nuScenes-style mAP per
    class, counts and filters (every value of the section; the JSON keeps full precision)."""
    k = det.get("kitti") or {}
    head = k.get("headline_level", "all")
    rows = []
    graded = (det.get("kitti_graded") or {}).get("per_class") or {}
    tables = [(cls, lv, r, "") for cls, by_level in (k.get("per_class") or {}).items() for lv, r in by_level.items()]
    # generated ground truth graded by KITTI level from the scan (evaluation.py: `kitti_graded`)
    tables += [(cls, lv, r, " (virtual-camera levels)") for cls, by_level in graded.items() for lv, r in by_level.items()
               if lv != "all"]
    capped = False
    for cls, lv, r, tag in tables:
        bold = ' style="font-weight:bold"' if lv == head and not tag else ""
        n = r.get("n_gt")
        cap = isinstance(n, int) and 0 < n < 40  # the devkit's R40 caps AP at (n - 1) / 40 below 40 boxes
        capped |= cap
        mark = "*" if cap else ""
        rows.append(f"<tr{bold}><td>{html.escape(cls)}</td><td>{html.escape(str(lv) + tag)}</td>"
                    f"<td>{_num(r.get('ap_r40_3d'))}{mark}</td><td>{_num(r.get('ap_r40_bev'))}{mark}</td>"
                    f"<td>{_num(r.get('aos_r40_bev'))}</td><td>{_num(r.get('ap_r11_3d'))}</td>"
                    f"<td>{r.get('n_gt', '–')}</td><td>{r.get('n_ignored_gt', '–')}</td>"
                    f"<td>{r.get('tp_3d', '–')} / {r.get('fp_3d', '–')} / {r.get('fn_3d', '–')}</td></tr>")
    iou = ", ".join(f"{html.escape(str(c))} {v:g}" for c, v in (det.get("iou_thresholds") or {}).items())
    parts = [f"<h3>Detection (KITTI AP R40; IoU {iou}; headline level in bold: {html.escape(str(head))})</h3>",
             "<table><tr><th>class</th><th>level</th><th>AP 3D</th><th>AP BEV</th><th>AOS BEV</th><th>AP R11 3D</th>"
             "<th>ground truth</th><th>ignored</th><th>TP / FP / FN (3D)</th></tr>" + "".join(rows) + "</table>"]
    notes = []
    if capped:
        notes.append("* fewer than 40 boxes counted: KITTI's R40 caps AP at (n &minus; 1) / 40 there.")
    if graded:
        notes.append("Rows “virtual-camera levels”: generated ground truth at KITTI's levels (moderate is the goal's "
                     "level), graded by a virtual camera with KITTI's focal length facing each box (all around the "
                     "vehicle), occlusion from the generator's truth where the bag has it (else from the scan's rays), "
                     "no truncation (perception_nodes/eval/"
                     "generated_difficulty.py); a box at one level is ignored, not missed, at a stricter one, so an "
                     "easier level can score lower.")
    if notes:
        parts.append("<p><small>" + "<br>".join(notes) + "</small></p>")
    nus = det.get("nuscenes")
    if nus:
        nrows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{_num(r.get('ap'))}</td>"
            f"<td>{html.escape(', '.join(f'{t}: {_num(v, 2)}' for t, v in (r.get('ap_per_threshold') or {}).items()))}</td>"
            f"<td>{_num(r.get('ate'))}</td><td>{_num(r.get('ase'))}</td><td>{_num(r.get('aoe'))}</td>"
            f"<td>{r.get('n_gt', '–')}</td><td>{r.get('n_pred', '–')}</td></tr>"
            for c, r in (nus.get("per_class") or {}).items())
        parts.append(f"<p>nuScenes-style (centre distance): mAP {_num(nus.get('map'))}, NDS {_num(nus.get('nds'))} "
                     f"(renormalised {_num(nus.get('nds_renormalised'))}), mATE {_num(nus.get('mate'))} m, "
                     f"mASE {_num(nus.get('mase'))}, mAOE {_num(nus.get('maoe'))} rad</p>"
                     "<table><tr><th>class</th><th>AP</th><th>AP per distance threshold (m)</th><th>ATE m</th>"
                     f"<th>ASE</th><th>AOE rad</th><th>ground truth</th><th>detections</th></tr>{nrows}</table>")
    counts = det.get("counts") or {}
    filt = det.get("filters") or {}
    parts.append("<p><small>" + "; ".join(f"{html.escape(str(key))}: {_counts_text(v)}" for key, v in counts.items())
                 + "<br>filters: " + "; ".join(f"{html.escape(str(key))}: {_counts_text(v)}" for key, v in filt.items())
                 + "</small></p>")
    if det.get("pr_curves"):
        parts.append(f'<img src="{det["pr_curves"]}" width="520">')
    return "".join(parts)


def detections_section(result: ReplayResult) -> str:
    """The LiDAR branch part of the report: BEV boxes with covariance ellipses over the evidential grid
    for the last scans (PNGs written beside the report), or why the branch did not run."""
    out = result.out_dir
    figures = []
    for i, (stamp, det, occ, unc) in enumerate(result.detections[-3:]):
        name = f"detections_{i}.png"
        plot_detections(stamp, det, occ, unc, result.ground_truth.get(stamp), out / name)
        figures.append((name, len(det.detections)))
    if figures:
        return (f"<h2>LiDAR branch: detections with uncertainty ({sum(n for _, n in figures)} boxes in the last "
                f"{len(figures)} scans)</h2><p>solid: boxes with heading line (colour = class); ellipses: the "
                f"{ELLIPSE_LEVEL:.0%} region of the centre (radius {ELLIPSE_SIGMA:.2f} sigma) from the published "
                "covariance (NIG variance after the sidecar's calibration), its radii drawn "
                f"{ELLIPSE_DRAW_SCALE:g} times larger so that they show at this scale; dashed blue: ground truth; "
                "background: the "
                "occupancy evidence the node publishes with them (learned + geometric where fused). Labels: the "
                "highest-scoring boxes that do not overlap."
                + (f" Weights: {html.escape(result.lidar_weights)}." if result.lidar_weights else "") + "</p>"
                + "".join(f'<img src="{n}" width="1100"><br>' for n, _ in figures))
    if result.skipped:
        return ("<h2>LiDAR branch</h2><p>not run: "
                + html.escape("; ".join(f"{k}: {v}" for k, v in result.skipped.items())) + "</p>")
    return ""


def plot_fusion(stamp: int, occ: Any, unc: Any | None, con: Any | None, gt: Any | None, path: Path) -> None:
    """The fused grid: P(occupied), vacuity and the conflict layer, ground-truth boxes dashed."""
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.5), constrained_layout=True)
    ext = _extent(occ)
    panels = ((occ, "fused occupancy", plt.get_cmap("RdYlGn_r").with_extremes(bad="#b0b0b0"), "P(occupied) % (grey: unknown)"),
              (unc, "fused vacuity", plt.get_cmap("magma"), "vacuity % (100: no evidence)"),
              (con, "conflict between branches", plt.get_cmap("viridis"), "degree of conflict %"))
    for ax, (msg, title, cmap, label) in zip(axes, panels, strict=True):
        if msg is not None:
            data = np.ma.masked_less(grid_array(msg).astype(np.float32), 0)
            im = ax.imshow(data, origin="lower", extent=_extent(msg), cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        _bev_axes(ax, f"{title} @ {stamp / 1e9:.1f} s", ext, gt, dashed=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_fusion_weights(weights: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Each branch's weight (health gate x trust) per fused frame."""
    fig, ax = plt.subplots(figsize=(11, 3.2), constrained_layout=True)
    t0 = min(s for v in weights.values() for s, _ in v)
    styles = ("-", "--", "-.", ":")  # branches often share a weight (e.g. both LiDAR branches at 1): keep each visible
    for i, (name, series) in enumerate(sorted(weights.items())):
        s = np.asarray(series, dtype=np.float64)
        ax.step((s[:, 0] - t0) / 1e9, s[:, 1], where="post", label=name, lw=2.2 - 0.35 * (i % 4),
                ls=styles[i % len(styles)])
    ax.axhline(0.2, color="0.5", lw=0.8)
    ax.text(0.0, 0.21, "0.2", color="0.4", fontsize=7, transform=ax.get_yaxis_transform())
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("s since the first fused frame")
    ax.set_ylabel("weight")
    ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fusion_section(result: ReplayResult) -> str:
    """The fusion node part of the report: the last fused grid and the branch weights over time."""
    frames = getattr(result, "fusion", None) or []
    weights = getattr(result, "fusion_weights", None) or {}
    if not frames:
        return ""
    stamp, occ, unc, con = frames[-1]
    plot_fusion(stamp, occ, unc, con, result.ground_truth.get(stamp), result.out_dir / "fusion_grid.png")
    parts = ["<h2>Evidence fusion (docs/fusion.md)</h2><p>fused occupancy, vacuity and the per-cell conflict "
             "between branches for the last fused frame; below, each branch's weight (health gate x "
             "conflict-based trust) per frame (grey line: 0.2). Caution: behind walls and outside every beam the "
             "learned LiDAR branch fills in evidence (mostly free, at low vacuity) where nothing was seen; the "
             "fused grid inherits it, so low vacuity there is not an observation (scores of those cells: "
             "benchmarks/fusion_check.py, region not_visible; `branches.lidar_learned.mask_with: geometric` "
             "keeps learned evidence only where a beam reached).</p>", '<img src="fusion_grid.png" width="1250"><br>']
    if weights:
        plot_fusion_weights(weights, result.out_dir / "fusion_weights.png")
        parts.append('<img src="fusion_weights.png" width="1000">')
        rows = "".join(f"<tr><td>{html.escape(b)}</td><td>{len(v)}</td><td>{min(w for _, w in v):.3f}</td>"
                       f"<td>{float(np.mean([w for _, w in v])):.3f}</td><td>{v[-1][1]:.3f}</td></tr>"
                       for b, v in sorted(weights.items()))
        parts.append("<table><tr><th>branch</th><th>frames</th><th>min weight</th><th>mean</th><th>last</th></tr>"
                     f"{rows}</table>")
        parts.append(_low_weight_table(weights, getattr(result, "fusion_low_weights", None) or {}))
    return "\n".join(parts)


def _low_weight_table(weights: dict[str, list[tuple[int, float]]],
                      low: dict[str, list[tuple[int, float, str]]], max_rows: int = 20) -> str:
    """Episodes of consecutive fused frames in which a branch was weighted below the node's ``weight_warn``,
    with the node's own reason at the episode's lowest weight (what /diagnostics says at that frame)."""
    if not low:
        return "<p>No branch was weighted below the fusion node's <code>weight_warn</code> in any fused frame.</p>"
    t0 = min(v[0][0] for v in weights.values() if v)
    rows = []
    for b, series in sorted(weights.items()):
        why = {s: (w, r) for s, w, r in low.get(b, [])}
        ep: list[tuple[int, float, str]] = []
        for s, _ in [*series, (None, None)]:
            if s is not None and s in why:
                ep.append((s, *why[s]))
                continue
            if ep:
                s_min = min(ep, key=lambda e: e[1])
                rows.append((ep[0][0], f"<tr><td>{html.escape(b)}</td><td>{(ep[0][0] - t0) / 1e9:.1f}-"
                                       f"{(ep[-1][0] - t0) / 1e9:.1f} s</td><td>{len(ep)}</td><td>{s_min[1]:.3f}</td>"
                                       f"<td>{html.escape(s_min[2])}</td></tr>"))
                ep = []
    rows.sort()
    more = f"<p>({len(rows) - max_rows} more episodes not shown)</p>" if len(rows) > max_rows else ""
    return ("<p>Frames with a branch weighted below <code>weight_warn</code>, and why (the node's reason at the "
            "episode's lowest weight; the first fused frames have no grid of the slower branches yet):</p>"
            "<table><tr><th>branch</th><th>from-to (s after the first fused frame)</th><th>frames</th>"
            "<th>min weight</th><th>why</th></tr>" + "".join(r for _, r in rows[:max_rows]) + "</table>" + more)


def plot_detection_fusion(stamp: int, lidar: Any | None, fused: Any, gt: Any | None, path: Path) -> None:
    """The LiDAR branch's boxes (left) beside the fused boxes (right) of one stamp, with their 90 % centre
    ellipses (radii drawn :data:`ELLIPSE_DRAW_SCALE` times larger) and the ground truth dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5), constrained_layout=True)
    colors = {"car": "#00c000", "pedestrian": "#ff3030", "cyclist": "#3060ff"}
    for ax, (msg, title) in zip(axes, ((lidar, "LiDAR branch"), (fused, "detection fusion")), strict=True):
        boxes = _detection_boxes(msg) if msg is not None else []
        _bev_axes(ax, f"{title} @ {stamp / 1e9:.1f} s ({len(boxes)} boxes)", [-40.0, 40.0, -40.0, 40.0], gt,
                  dashed=True)
        for label, score, box, cov, _ in boxes:
            color = colors.get(label.lower(), "black")
            c = np.vstack([box.corners_xy(), box.corners_xy()[:1]])
            ax.plot(c[:, 0], c[:, 1], color=color, lw=1.2)
            e = covariance_ellipse(cov[:2, :2], box.center[:2], k=ELLIPSE_SIGMA * ELLIPSE_DRAW_SCALE)
            ax.fill(e[:, 0], e[:, 1], color=color, alpha=0.25, lw=0)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fallback_spans(t: np.ndarray, fallback: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) times of each run of fallback commands (end: the next command's time, or + one period)."""
    spans = []
    period = float(np.median(np.diff(t))) if len(t) > 1 else 0.1
    i = 0
    while i < len(t):
        if fallback[i]:
            j = i
            while j + 1 < len(t) and fallback[j + 1]:
                j += 1
            spans.append((t[i], t[j + 1] if j + 1 < len(t) else t[j] + period))
            i = j + 1
        else:
            i += 1
    return spans


def plot_control(rows: list[tuple], truth: list[tuple[int, float]], path: Path) -> None:
    """Fused curvature with its interval band, the commanded curvature, ground truth, speed; fallback shaded."""
    a = np.array([r[:6] for r in rows], dtype=np.float64)
    fb = np.array([r[6] for r in rows], dtype=bool)
    t0 = a[0, 0]
    t = (a[:, 0] - t0) / 1e9
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 5.2), sharex=True, constrained_layout=True,
                                  gridspec_kw={"height_ratios": [2.2, 1]})
    lo, hi = np.clip(a[:, 2], -1, 1), np.clip(a[:, 3], -1, 1)  # an infinite interval (no evidence) to the axes
    ax.fill_between(t, lo, hi, step="post", color="tab:blue", alpha=0.25, label="predictive interval")
    ax.step(t, a[:, 1], where="post", color="tab:blue", lw=1.3, label="fused curvature")
    ax.step(t, a[:, 4], where="post", color="k", lw=1.0, ls="--", label="commanded")
    if truth:
        g = np.array(truth, dtype=np.float64)
        ax.plot((g[:, 0] - t0) / 1e9, g[:, 1], color="tab:green", lw=1.0, ls=":", label="ground truth")
    ax2.step(t, a[:, 5], where="post", color="k", lw=1.2)
    for x0, x1 in _fallback_spans(t, fb):
        for axis in (ax, ax2):
            axis.axvspan(x0, x1, color="tab:red", alpha=0.15, lw=0)
    finite = np.concatenate([a[:, 1], a[:, 4], a[:, 2], a[:, 3]])  # an infinite interval just fills the axes
    finite = finite[np.isfinite(finite)]
    if finite.size:
        pad = 0.1 * (finite.max() - finite.min()) + 1e-3
        ax.set_ylim(finite.min() - pad, finite.max() + pad)
    ax.set_ylabel("curvature (1/m)")
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax2.set_ylabel("speed (m/s)")
    ax2.set_xlabel("s since the first command (red: fallback)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _detection_branches_caption(result: ReplayResult) -> str:
    """What the fused boxes are made of, from the detection inputs the node actually used in this replay."""
    inputs = ((getattr(result, "latency", None) or {}).get("inputs", {}) or {}).get("detection_fusion", {})
    used = [t for t, a in inputs.items() if t.endswith("/detections") and (a or {}).get("used", 0) > 0]
    if len(used) <= 1:
        return ("With the LiDAR branch as the only detecting branch each fused box is one of its boxes (class "
                "evidence discounted by its weight), merged with the memory: the previous fused boxes moved by the "
                "ego motion (odometry), which change the box's centre, size, heading and covariance (a memory box "
                "no LiDAR box matched is not published).")
    return (f"Detecting branches used: {', '.join(sorted(used))}. Boxes of different branches that the "
            "association pairs are merged (class evidence summed with the branch weights, box and covariance by "
            "the box rule), then with the memory: the previous fused boxes moved by the ego motion (odometry).")


def detection_fusion_section(result: ReplayResult) -> str:
    """The detection fusion node's part of the report: its last fused set beside the LiDAR boxes."""
    frames = getattr(result, "fused_detections", None) or []
    if not frames:
        return ""
    stamp, fused = frames[-1]
    lidar = next((d for s, d, _, _ in result.detections if s == stamp), None)
    plot_detection_fusion(stamp, lidar, fused, result.ground_truth.get(stamp), result.out_dir / "detection_fusion.png")
    return ("<h2>Detection fusion (docs/detection_fusion.md)</h2><p>left: the LiDAR branch's boxes, right: the "
            "fused boxes of the same stamp (class evidence summed over branches with their weights, box and "
            f"covariance merged); ellipses: {ELLIPSE_LEVEL:.0%} centre regions, radii x{ELLIPSE_DRAW_SCALE:g}; "
            f"dashed blue: ground truth. {_detection_branches_caption(result)}</p>"
            "<img src=\"detection_fusion.png\" width=\"1100\">")


def plot_bev_fusion(stamp: int, lidar: Any | None, bev: Any, gt: Any | None, modes: list[tuple[int, int]],
                    path: Path) -> None:
    """The LiDAR branch's boxes beside the bev_fusion node's (same stamp, ground truth dashed) and, below,
    the fuser's mode per frame (bit mask: 1 LiDAR used, 2 camera used)."""
    fig = plt.figure(figsize=(14, 8.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=[6.5, 1.4])
    colors = {"car": "#00c000", "pedestrian": "#ff3030", "cyclist": "#3060ff"}
    for k, (msg, title) in enumerate(((lidar, "LiDAR branch"), (bev, "camera + LiDAR fuser (bev_fusion)"))):
        ax = fig.add_subplot(grid[0, k])
        boxes = _detection_boxes(msg) if msg is not None else []
        _bev_axes(ax, f"{title} @ {stamp / 1e9:.1f} s ({len(boxes)} boxes)", [-40.0, 40.0, -40.0, 40.0], gt,
                  dashed=True)
        for label, _, box, cov, _ in boxes:
            color = colors.get(label.lower(), "black")
            c = np.vstack([box.corners_xy(), box.corners_xy()[:1]])
            ax.plot(c[:, 0], c[:, 1], color=color, lw=1.2)
            e = covariance_ellipse(cov[:2, :2], box.center[:2], k=ELLIPSE_SIGMA * ELLIPSE_DRAW_SCALE)
            ax.fill(e[:, 0], e[:, 1], color=color, alpha=0.25, lw=0)
    ax = fig.add_subplot(grid[1, :])
    if modes:
        m = np.array(modes, dtype=np.float64)
        ax.step((m[:, 0] - m[0, 0]) / 1e9, m[:, 1], where="post", color="k", lw=1.2)
    ax.set_yticks([0, 1, 2, 3], ["none", "lidar_only", "camera_only", "fused"])
    ax.set_ylim(-0.3, 3.3)
    ax.set_xlabel("s since the first frame")
    ax.set_title("bev_fusion mode per frame (~/debug/mode)", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bev_fusion_section(result: ReplayResult) -> str:
    """The bev_fusion node's part of the report: its last boxes beside the LiDAR branch's, its mode over time."""
    frames = getattr(result, "bev_fusion_detections", None) or []
    if not frames:
        return ""
    stamp, bev = frames[-1]
    lidar = next((d for s, d, _, _ in result.detections if s == stamp), None)
    modes = getattr(result, "bev_fusion_modes", None) or []
    counts = {name: sum(1 for _, m in modes if m == k) for k, name in ((3, "fused"), (1, "lidar_only"),
                                                                         (2, "camera_only"), (0, "none"))}
    plot_bev_fusion(stamp, lidar, bev, result.ground_truth.get(stamp), modes, result.out_dir / "bev_fusion.png")
    return ("<h2>Camera + LiDAR fuser (docs/bev_fusion.md)</h2><p>left: the LiDAR branch's boxes, right: the "
            "BEVFusion-style node's boxes of the same scan (LiDAR BEV + camera BEV through a conv fuser and the "
            f"LiDAR branch's heads); ellipses: {ELLIPSE_LEVEL:.0%} centre regions, radii x{ELLIPSE_DRAW_SCALE:g}; "
            "dashed blue: ground truth. Below: which inputs each frame had. Frames: "
            + html.escape(", ".join(f"{k} {v}" for k, v in counts.items() if v)) + ".</p>"
            '<img src="bev_fusion.png" width="1100">')


def control_section(result: ReplayResult) -> str:
    """The control node part of the report: the command over time with its interval and fallback periods."""
    rows = getattr(result, "control", None) or []
    if not rows:
        return ""
    plot_control(rows, getattr(result, "control_truth", None) or [], result.out_dir / "control.png")
    fb = [r[6] for r in rows]
    episodes = sum(1 for i, f in enumerate(fb) if f and (i == 0 or not fb[i - 1]))
    tail = 0  # trailing stale-input fallback: the input ended (a replay's last timer tick), not a fault
    while tail < len(rows) and rows[-1 - tail][6] and "stale" in rows[-1 - tail][7]:
        tail += 1
    end_note = f" ({tail} of them after the curvature input ended: stale input)" if tail else ""
    reasons: dict[str, int] = {}
    for r in rows:
        if r[6]:
            key = r[7].split(" (")[0][:120]
            reasons[key] = reasons.get(key, 0) + 1
    top = "".join(f"<tr><td>{html.escape(k)}</td><td>{n}</td></tr>" for k, n in
                  sorted(reasons.items(), key=lambda kv: -kv[1])[:8])
    return ("<h2>Control command (docs/control.md)</h2><p>fused curvature at the lookahead with its predictive "
            "interval (Student-t of the fused NIG, at the node's interval_level), the commanded curvature and "
            f"speed; fallback periods shaded red. {len(rows)} commands, {sum(fb)} in fallback{end_note}, "
            f"{episodes} fallback episode(s).</p>"
            '<img src="control.png" width="1000">'
            + (f"<table><tr><th>fallback reason</th><th>commands</th></tr>{top}</table>" if top else ""))


def _branch_latency_html(lat: dict) -> str:
    """The LiDAR branch's own end-to-end latency for the headline (empty when it did not run)."""
    lb = (lat.get("end_to_end_paths") or {}).get("lidar_branch")
    if not lb or not lb.get("count"):
        return ""
    return (f"\nLiDAR branch ({html.escape(str(lb['node']))}) end-to-end p50 {lb['p50_ms'] or 0:.1f} ms, "
            f"p99 {lb['p99_ms'] or 0:.1f} ms, max {lb['max_ms'] or 0:.1f} ms —")


def stereo_method(result: ReplayResult) -> str:
    """Which stereo_occupancy mode ran, read from its latency stages (the learned mode times ``network``)."""
    stages = (getattr(result, "latency", None) or {}).get("stages", {})
    return "learned" if any(k.startswith("stereo_occupancy/network") for k in stages) else "SGBM"


def plot_stereo(stamp: int, lidar_occ: Any | None, occ: Any, unc: Any, gt: Any | None, path: Path,
                method: str = "SGBM") -> None:
    """The LiDAR grid (left, when there is one of the same stamp) beside the stereo node's occupancy and
    vacuity, same axes, ground-truth boxes in blue."""
    panels = ([("LiDAR occupancy", lidar_occ, "occ")] if lidar_occ is not None else []) + [
        (f"stereo occupancy ({method})", occ, "occ"), ("stereo uncertainty (vacuity)", unc, "unc")]
    fig, axes = plt.subplots(1, len(panels), figsize=(7.0 * len(panels), 6.5), constrained_layout=True, squeeze=False)
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="#b0b0b0")
    ext = _extent(occ)
    for ax, (title, msg, kind) in zip(axes[0], panels, strict=True):
        if kind == "occ":
            im = ax.imshow(np.ma.masked_less(grid_array(msg).astype(np.float32), 0), origin="lower", extent=_extent(msg),
                           cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8, label="P(occupied) % (grey: unknown)")
        else:
            im = ax.imshow(grid_array(msg), origin="lower", extent=_extent(msg), cmap="magma", vmin=0, vmax=100,
                           interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8, label="vacuity % (100: no evidence)")
        _bev_axes(ax, f"{title} @ {stamp / 1e9:.1f} s", ext, gt)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def stereo_section(result: ReplayResult) -> str:
    """The stereo node's part of the report: its grids beside the LiDAR grid of the same stamp."""
    grids = getattr(result, "stereo_grids", None) or []
    if not grids:
        return ""
    names = []
    for i, (stamp, occ, unc) in enumerate(grids[-2:]):
        # the LiDAR grid nearest in time (camera and LiDAR stamps differ by their trigger offsets), within 60 ms
        near = min(result.grids, key=lambda g: abs(g[0] - stamp), default=None)
        lidar_occ = near[1] if near is not None and abs(near[0] - stamp) <= 60_000_000 else None
        name = f"stereo_{i}.png"
        plot_stereo(stamp, lidar_occ, occ, unc, result.ground_truth.get(stamp), result.out_dir / name,
                    stereo_method(result))
        names.append(name)
    label = "learned, StereoVoxelNet-style" if stereo_method(result) == "learned" else "classical SGBM"
    return (f"<h2>Stereo occupancy ({label}) beside the LiDAR grid</h2><p>left: the LiDAR occupancy node's "
            "grid of the same stamp; middle and right: the stereo node's grid (free along each camera ray up to the "
            "surface, occupied at it, unknown behind and outside the field of view; far evidence down-weighted "
            "as stereo depth error grows with Z&sup2;).</p>"
            + "".join(f'<img src="{n}" width="1300"><br>' for n in names))


def _nearest(grids: Any, stamp: int, tol_ns: int = 60_000_000) -> Any | None:
    near = min(grids or [], key=lambda g: abs(g[0] - stamp), default=None)
    return near[1] if near is not None and abs(near[0] - stamp) <= tol_ns else None


def camera_section(result: ReplayResult) -> str:
    """The camera -> BEV node's part of the report: its grids beside the LiDAR and stereo grids nearest in
    time (within 60 ms), same axes, ground-truth boxes in blue."""
    grids = getattr(result, "camera_grids", None) or []
    if not grids:
        return ""
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="#b0b0b0")
    names = []
    for i, (stamp, occ, unc) in enumerate(grids[-2:]):
        panels = [(t, m, k) for t, m, k in (("LiDAR occupancy", _nearest(result.grids, stamp), "occ"),
                                            (f"stereo occupancy ({stereo_method(result)})",
                                             _nearest(result.stereo_grids, stamp), "occ"),
                                            ("camera occupancy (learned BEV)", occ, "occ"),
                                            ("camera uncertainty (vacuity)", unc, "unc")) if m is not None]
        fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.6), constrained_layout=True, squeeze=False)
        for ax, (title, msg, kind) in zip(axes[0], panels, strict=True):
            data = grid_array(msg).astype(np.float32)
            im = ax.imshow(np.ma.masked_less(data, 0) if kind == "occ" else data, origin="lower", extent=_extent(msg),
                           cmap=cmap if kind == "occ" else "magma", vmin=0, vmax=100, interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8, label="P(occupied) % (grey: unknown)" if kind == "occ" else "vacuity %")
            _bev_axes(ax, f"{title} @ {stamp / 1e9:.1f} s", _extent(occ), result.ground_truth.get(stamp))
        name = f"camera_bev_{i}.png"
        fig.savefig(result.out_dir / name, dpi=80)
        plt.close(fig)
        names.append(name)
    return ("<h2>Camera &rarr; BEV occupancy (learned) beside the LiDAR and stereo grids</h2><p>The camera node's "
            "grid from the left image alone (Lift-Splat network, weights trained on generated scenes; unknown behind "
            "and beside the camera's field of view), with the LiDAR occupancy node's and the stereo node's grids "
            "of the nearest stamp.</p>" + "".join(f'<img src="{n}" width="1400"><br>' for n in names))


def write_report(result: ReplayResult) -> Path:
    """Write ``report.html`` (+ PNGs) into the replay's output folder and return its path."""
    out = result.out_dir
    figures = []
    for i, (stamp, occ, unc) in enumerate(result.grids[-4:]):
        name = f"bev_{i}.png"
        plot_bev(stamp, occ, unc, result.ground_truth.get(stamp), out / name)
        figures.append(name)
    det_html = detections_section(result)
    fusion_html = fusion_section(result)
    lat = result.latency
    series = result.samples
    budgets = {k: v.get("budget_ms") for k, v in lat["stages"].items()}
    if series:
        plot_latency(series, out / "latency_hist.png", budgets)
    rows = []
    for key, s in sorted(lat["stages"].items()):
        def f(v: Any) -> str:
            return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

        miss_style = ' style="color:#b00"' if s.get("deadline_misses") else ""
        rows.append(
            f"<tr><td>{html.escape(key)}</td><td>{s['count']}</td><td>{f(s['mean_ms'])}</td><td>{f(s['p50_ms'])}</td>"
            f"<td>{f(s['p90_ms'])}</td><td>{f(s['p99_ms'])}</td><td>{f(s['max_ms'])}</td><td>{f(s['jitter_ms'])}</td>"
            f"<td>{f(s['budget_ms'])}</td><td{miss_style}>{s['deadline_misses']}</td></tr>"
        )
    e2e = lat["end_to_end"]
    over = lat["replay"]["overhead_per_frame"]
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>perception replay report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Replay report</h1>
<p>bag: <code>{html.escape(str(result.bag))}</code> — {result.input_frames} input frames —
end-to-end latency (occupancy path) p50 {e2e['p50_ms'] or 0:.1f} ms, p99 {e2e['p99_ms'] or 0:.1f} ms, max {e2e['max_ms'] or 0:.1f} ms —{_branch_latency_html(lat)}
replay overhead per frame p50 {over['p50_ms'] or 0:.2f} ms.</p>
<p>malformed inputs: {html.escape(str(lat['malformed_inputs']) or '{}')} — dropped inputs: {html.escape(str(lat['dropped_inputs']))}</p>
<h2>Bird's-eye view: occupancy and uncertainty (ground truth boxes in blue)</h2>
{''.join(f'<img src="{n}" width="1100"><br>' for n in figures) or '<p>no grids were produced</p>'}
{det_html}
{stereo_section(result)}
{camera_section(result)}
{fusion_html}
{bev_fusion_section(result)}
{detection_fusion_section(result)}
{control_section(result)}
<h2>Latency</h2>
{'<img src="latency_hist.png" width="1200">' if series else ''}
<table><tr><th>node/stage</th><th>count</th><th>mean ms</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>jitter</th><th>budget</th><th>misses</th></tr>
{''.join(rows)}</table>
{_metrics_html(result.metrics)}
<h2>Outputs</h2><p>{html.escape(', '.join(f'{k}: {v}' for k, v in sorted(result.output_counts.items())))}</p>
</body></html>"""
    path = out / "report.html"
    path.write_text(doc)
    return path
