"""The stereo occupancy node's learned mode (issue 11, Deliver 3 and 5, learned part): the grid it publishes is
the network + frustum-to-BEV evidence applied directly to the same pair (float32 tolerance), its stages are
named for what runs, bad input (blackout, 16-bit, too small) is reported while it keeps running, a pair of
another size is resized to the network's input, and ``method`` is validated at configure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.camera_info import camera_model_from_msg
from perception_nodes.codecs.image import image_to_numpy
from perception_nodes.config import ConfigError
from perception_nodes.evaluation import grid_array
from perception_nodes.pipeline.stereo import stereo_geometry
from perception_nodes.pipeline.stereo_learned import (
    LearnedStereoParams,
    consistent_disparity_ratio,
    frustum_lut,
    frustum_to_grid,
    scaled_geometry,
)

from tests.test_stereo_occupancy_node import LEFT, LINFO, RIGHT, RINFO, S, _feed, _first_frame, _image, _node, _restamp, records  # noqa: F401

pytest.importorskip("torch", reason="the learned mode needs PyTorch")

STAGES = ("decode", "resize", "cost_volume", "network", "health", "evidence_to_grid", "publish")
HEALTH = "~/debug/valid_disparity_ratio"


def _pairs(records, n):  # noqa: F811
    """tf_static and the first ``n`` (left, right, left info, right info) of the bag."""
    tf = next(m for t, m in records if t == topics.TF_STATIC)
    by = {t: [m for tt, m in records if tt == t] for t in (LEFT, RIGHT, LINFO, RINFO)}
    return tf, list(zip(*(by[t][:n] for t in (LEFT, RIGHT, LINFO, RINFO)), strict=False))


def test_learned_grid_is_the_network_plus_evidence_pipeline(records):  # noqa: F811
    import torch

    from perception_nodes.models.stereo_voxel import load_stereo_voxel
    from perception_nodes.pipeline.occupancy import to_occupancy_msg_data

    node, clock = _node(method="learned")
    tf, pairs = _pairs(records, 3)
    _feed(node, clock, topics.TF_STATIC, tf)
    net, _ = load_stereo_voxel()  # not BatchNorm-folded, whole forward: the node's path differs in both
    lp = node.learned
    for lmsg, rmsg, linfo, rinfo in pairs:
        out = {}
        for topic, msg in ((LINFO, linfo), (RINFO, rinfo), (LEFT, lmsg), (RIGHT, rmsg)):
            out.update(_feed(node, clock, topic, msg))
        assert node.output_topic in out
        assert [t.rsplit("/", 1)[1][:-3] for t in out if t.startswith("~/debug/processing_time/")] == list(STAGES)
        left, right = image_to_numpy(lmsg), image_to_numpy(rmsg)  # rgb8 at 320x96: the network's own size
        g = stereo_geometry(camera_model_from_msg(linfo), camera_model_from_msg(rinfo))
        T = node.sensor_to_base(lmsg.header.frame_id)
        with torch.no_grad():
            res = net(torch.from_numpy(np.ascontiguousarray(left.transpose(2, 0, 1)))[None],
                      torch.from_numpy(np.ascontiguousarray(right.transpose(2, 0, 1)))[None])
        lut = frustum_lut(scaled_geometry(g, 320, 96), net.config.planes, net.config.plane_step, T, node.grid, lp)
        grid = frustum_to_grid(res.occupancy_evidence[0].numpy(), lut, node.grid, lp)
        prob, vac = to_occupancy_msg_data(grid, unknown_vacuity=node.unknown_vacuity)
        got_p, got_v = grid_array(out[node.output_topic]), grid_array(out[node.uncertainty_topic])
        assert stamp_to_ns(out[node.output_topic].header.stamp) == stamp_to_ns(lmsg.header.stamp)
        assert ((got_p == -1) == (prob == -1)).all() and (got_p >= 0).sum() > 1000  # the same cells known
        # published percentages: equal except where float32 rounding of the folded network sits on a .5
        p100 = 100.0 * grid.probability()
        near_half = np.abs(p100 - np.floor(p100) - 0.5) < 1e-3
        assert ((got_p == prob) | near_half).all() and (got_p != prob).mean() < 1e-3
        v100 = 100.0 * grid.vacuity()
        assert ((got_v == vac) | (np.abs(v100 - np.floor(v100) - 0.5) < 1e-3)).all()
        ratio = consistent_disparity_ratio(left, right, res.disparity[0].numpy(), lp.consistency_tol, lp.texture_min)
        assert out[HEALTH].data == pytest.approx(ratio, abs=2e-3) and 0.5 < ratio <= 1.0
    st = next(s for s in node.diagnostic_statuses() if s.name == "stereo_occupancy: stereo")
    assert st.level == 0 and "consistent disparity ratio" in st.message
    assert st.values["method"] == "learned" and st.values["network_input"] == "320x96"
    assert st.values["evidence_to_grid_builds"] == "1"  # the frustum -> BEV table is built once per rig
    for stage in STAGES:
        assert node.latency.series[stage].window_summary().count == 3


def test_learned_bad_input_is_reported_and_other_sizes_are_resized(records):  # noqa: F811
    import cv2

    tf, f = _first_frame(records)
    node, clock = _node(method="learned")
    _feed(node, clock, topics.TF_STATIC, tf)
    t0 = stamp_to_ns(f[LEFT].header.stamp)
    limg, rimg = image_to_numpy(f[LEFT]), image_to_numpy(f[RIGHT])
    k = [0]

    def pair(left=limg, right=rimg, enc="rgb8", scale=None):
        k[0] += 1
        stamp = t0 + k[0] * S // 10
        infos = (f[LINFO], f[RINFO]) if scale is None else tuple(_scaled_info(m, *scale) for m in (f[LINFO], f[RINFO]))
        out = {}
        for topic, msg in zip((LINFO, RINFO), infos, strict=True):
            out.update(_feed(node, clock, topic, _restamp(msg, stamp)))
        out.update(_feed(node, clock, LEFT, _image(f[LEFT], left, enc, stamp)))
        out.update(_feed(node, clock, RIGHT, _image(f[RIGHT], right, enc, stamp)))
        return out

    out = pair()
    assert node.output_topic in out and out[HEALTH].data > 0.5
    known_native = grid_array(out[node.output_topic]) >= 0
    # a 16-bit image: malformed, with the reason; the node goes on
    _feed(node, clock, LEFT, _image(f[LEFT], np.zeros((96, 320), np.uint16), "mono16", t0 + S))
    assert node.malformed[LEFT] == 1 and "cannot be stereo-matched" in node.warnings["malformed"]
    # mono8 works (grey to the network's three channels)
    out = pair(left=np.ascontiguousarray(limg.mean(-1).astype(np.uint8)),
               right=np.ascontiguousarray(rimg.mean(-1).astype(np.uint8)), enc="mono8")
    assert node.output_topic in out
    # a blacked-out left camera: a grid all the same, health ~0 -> ERROR, the camera named
    out = pair(left=np.zeros_like(limg))
    assert node.output_topic in out and out[HEALTH].data < 0.15
    assert "left image uniform" in node.warnings["blackout"]
    st = next(s for s in node.diagnostic_statuses() if s.name == "stereo_occupancy: stereo")
    assert st.level == 2 and "stereo blind" in st.message
    # a 1240x372 pair (camera_info scaled alike) is resized to the network's 320x96: about the same grid
    big = (1240, 372)
    out = pair(left=cv2.resize(limg, big, interpolation=cv2.INTER_CUBIC),
               right=cv2.resize(rimg, big, interpolation=cv2.INTER_CUBIC), scale=big)
    assert node.output_topic in out and out[HEALTH].data > 0.5
    known_big = grid_array(out[node.output_topic]) >= 0
    assert (known_big & known_native).sum() > 0.9 * known_native.sum()
    st = next(s for s in node.diagnostic_statuses() if s.name == "stereo_occupancy: stereo")
    assert st.values["network_input"] == "320x96" and st.level == 0
    # too few rows once resized to 320 columns: dropped with the reason, not run on a sliver
    thin = (320, 8)
    out = pair(left=np.ascontiguousarray(limg[:8]), right=np.ascontiguousarray(rimg[:8]), scale=thin)
    assert node.output_topic not in out and "too few for the network" in node.warnings["size_mismatch"]
    out = pair()
    assert node.output_topic in out and node.frames_out == 5
    node.finish()
    acct = node.accounting()
    assert all(a["balanced"] for a in acct.values()), acct
    assert acct[LEFT]["dropped"]["size_mismatch"] == 1


def _scaled_info(msg, width, height):
    """``msg`` for the same camera at ``width x height`` (K and P scaled, pixel centres kept)."""
    sx, sy = width / msg.width, height / msg.height
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy()
    P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4).copy()
    for M in (K, P):
        M[0, 0] *= sx
        M[1, 1] *= sy
        M[0, 2] = (M[0, 2] + 0.5) * sx - 0.5
        M[1, 2] = (M[1, 2] + 0.5) * sy - 0.5
    P[0, 3] *= sx
    return dataclasses.replace(msg, width=width, height=height, k=K.reshape(-1), p=P.reshape(-1))


def test_method_is_validated_at_configure():
    with pytest.raises(ConfigError, match=r"method='cnn' is not one of sgbm, learned"):
        _node(method="cnn")
    with pytest.raises(ConfigError, match="input_width"):
        _node(method="learned", learned={"input_width": 100})
    node, _ = _node()
    assert node.method == "sgbm" and node.net is None  # the default: no network loaded
    with pytest.raises(ConfigError, match="method read-only"):
        node.reconfigure({"method": "learned"})
    from perception_nodes.config.schema import check_values

    with pytest.raises((ConfigError, ValueError), match="not one of sgbm, learned"):
        check_values("stereo_occupancy", {"method": "cnn"})


def test_learned_mode_runs_in_the_replayed_graph(records, scenario_bag, tmp_path):  # noqa: F811
    """The replay graph wires the learned mode from the params file (as live and launch do)."""
    from perception_nodes.config import load_params
    from perception_nodes.replay import run_graph

    params = load_params()
    params["stereo_occupancy"]["method"] = "learned"
    for name in params:
        if name not in ("stereo_occupancy",):
            params[name]["enabled"] = False
    grids = []
    run_graph(scenario_bag, params, tmp_path / "replay", progress=False,
              on_output=lambda name, msg: grids.append(msg) if name == "/perception/stereo/occupancy_grid" else None)
    assert len(grids) == 10 and all((grid_array(g) >= 0).sum() > 1000 for g in grids)
