"""The detection training loss: right maps score lower than wrong ones; masks and NaN targets respected."""

from __future__ import annotations

import numpy as np
import torch

from perception_nodes.evidential.nig import NIG
from perception_nodes.models import BevGrid, encode_targets
from perception_nodes.models.decode import dirichlet_targets
from perception_nodes.models.lidar_detection import LidarDetectionOutput
from perception_nodes.models.losses import detection_loss

GRID = BevGrid(-16.0, -16.0, 0.8, 40, 40)
BOXES = np.array([[3.3, -2.1, 0.8, 4.1, 1.8, 1.5, 0.4], [-8.0, 9.5, 0.9, 0.7, 0.6, 1.8, -2.0],
                  [10.2, 10.9, 0.9, 1.8, 0.6, 1.7, 3.0]])
LABELS = np.array([0, 1, 2])


def _output(alpha, gamma, occ, curv_gamma, nu=4.0):
    shape = gamma.shape
    box = NIG(gamma, torch.full(shape, nu), torch.full(shape, 3.0), torch.full(shape, 0.05))
    cs = curv_gamma.shape
    curv = NIG(curv_gamma, torch.full(cs, 2.0), torch.full(cs, 3.0), torch.full(cs, 1e-4))
    return LidarDetectionOutput(occ, alpha, box, curv, torch.tensor([100]))


def _perfect(t):
    soft = dirichlet_targets(torch.from_numpy(t.heatmap))
    alpha = (1.0 + 50.0 * soft).unsqueeze(0)
    gamma = torch.zeros(8, GRID.height * GRID.width)
    gamma[:, torch.from_numpy(t.indices)] = torch.from_numpy(t.regression).T
    return alpha, gamma.view(1, 8, GRID.height, GRID.width)


def test_right_maps_score_lower_than_wrong_ones():
    t = encode_targets(BOXES, LABELS, GRID, 3)
    alpha, gamma = _perfect(t)
    occ_label = torch.zeros(1, 16, 16)
    occ_label[0, 5:8, 5:8] = 1
    right_occ = torch.stack([occ_label * 20, (1 - occ_label) * 20], 1)
    curv_t = torch.tensor([[0.01, 0.02, float("nan")]])
    right = _output(alpha, gamma, right_occ, torch.tensor([[0.01, 0.02, 0.5]]))
    wrong = _output(alpha.roll(1, dims=1), gamma + 0.5, right_occ.flip(1), torch.tensor([[-0.05, 0.1, 0.0]]))
    kw = dict(kl_weight=1.0, occupancy_label=occ_label, curvature_target=curv_t)
    lr, pr = detection_loss(right, [t], **kw)
    lw, pw = detection_loss(wrong, [t], **kw)
    assert torch.isfinite(lr) and pr["objects"] == 3.0
    for part in ("classes", "boxes", "occupancy", "curvature"):
        assert pr[part] < pw[part], part
    assert lr < lw


def test_masks_and_missing_targets_are_respected():
    t = encode_targets(BOXES, LABELS, GRID, 3)
    alpha, gamma = _perfect(t)
    occ = torch.rand(1, 2, 16, 16) * 5
    label = (torch.rand(1, 16, 16) > 0.5).float()
    seen = torch.zeros(1, 16, 16, dtype=torch.bool)
    seen[0, :8] = True
    base = detection_loss(_output(alpha, gamma, occ, torch.zeros(1, 3)), [t], kl_weight=0.5, occupancy_label=label,
                          occupancy_observed=seen, curvature_target=torch.full((1, 3), float("nan")))[1]
    occ2 = occ.clone()
    occ2[0, :, 8:] = 99.0  # unobserved cells: anything goes
    other = detection_loss(_output(alpha, gamma, occ2, torch.ones(1, 3)), [t], kl_weight=0.5, occupancy_label=label,
                           occupancy_observed=seen, curvature_target=torch.full((1, 3), float("nan")))[1]
    assert base["occupancy"] == other["occupancy"] and base["curvature"] == other["curvature"] == 0.0
    # gamma away from the object cells does not enter the box loss
    g2 = gamma.clone()
    g2[0, :, 0, 0] = 7.0
    assert detection_loss(_output(alpha, g2, occ, torch.zeros(1, 3)), [t], kl_weight=0.5)[1]["boxes"] == base["boxes"]


def test_gradients_flow_and_empty_scene():
    t = encode_targets(BOXES, LABELS, GRID, 3)
    empty = encode_targets(np.zeros((0, 7)), np.zeros(0, int), GRID, 3)
    logits = torch.zeros(2, 4, GRID.height, GRID.width, requires_grad=True)
    gamma = torch.zeros(2, 8, GRID.height, GRID.width, requires_grad=True)
    out = _output(torch.nn.functional.softplus(logits) + 1, gamma, torch.zeros(2, 2, 16, 16), torch.zeros(2, 3))
    out.num_voxels = torch.tensor([10, 10])
    loss, parts = detection_loss(out, [t, empty], kl_weight=1.0)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(gamma.grad).all()
    assert float(gamma.grad[1].abs().max()) == 0.0 and float(gamma.grad[0].abs().max()) > 0.0
    assert parts["objects"] == 3.0


def test_box_loss_reads_the_neighbour_cells_with_a_regression_radius():
    """With regression_radius the box loss is taken at every cell of the 3 x 3 window (a wrong box one cell
    beside a centre raises it), without it those cells do not count; a map right at every window cell scores
    lower than one right at the centres only."""
    plain = encode_targets(BOXES, LABELS, GRID, 3)
    wide = encode_targets(BOXES, LABELS, GRID, 3, regression_radius=1)
    alpha, _ = _perfect(plain)
    cells, rows = wide.box_cells()
    gamma = torch.zeros(8, GRID.height * GRID.width)
    gamma[:, torch.from_numpy(cells)] = torch.from_numpy(rows).T
    gamma = gamma.view(1, 8, GRID.height, GRID.width)
    occ = torch.zeros(1, 2, 16, 16)
    kw = dict(kl_weight=0.5)
    beside = int(cells[~np.isin(cells, plain.indices)][0])  # a neighbour cell of some centre
    g2 = gamma.clone()
    g2.view(8, -1)[:, beside] += 3.0
    base_wide = detection_loss(_output(alpha, gamma, occ, torch.zeros(1, 3)), [wide], **kw)[1]["boxes"]
    assert detection_loss(_output(alpha, g2, occ, torch.zeros(1, 3)), [wide], **kw)[1]["boxes"] > base_wide
    base_plain = detection_loss(_output(alpha, gamma, occ, torch.zeros(1, 3)), [plain], **kw)[1]["boxes"]
    assert detection_loss(_output(alpha, g2, occ, torch.zeros(1, 3)), [plain], **kw)[1]["boxes"] == base_plain
    _, centre_only = _perfect(plain)  # right at the centre cells, zero around them
    assert detection_loss(_output(alpha, centre_only, occ, torch.zeros(1, 3)), [wide], **kw)[1]["boxes"] > base_wide
