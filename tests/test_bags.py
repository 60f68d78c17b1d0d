"""Bags: upstream rosbag2 fixtures in both storages, and KITTI -> MCAP checked by an independent decoder."""

from __future__ import annotations

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from perception_nodes import topics
from perception_nodes.bags import BagReader, BagWriter
from perception_nodes.bags.kitti import PERIOD_NS, convert_kitti, read_velodyne
from perception_nodes.codecs.backend import default_backend
from tests.conftest import SHARED_DATA, require

UPSTREAM = SHARED_DATA / "rosbag2_test_bags"


def test_reads_a_real_humble_sqlite3_bag_raw():
    """A real VLP-16 recording (rosbag2 sqlite3, Humble): type unknown here, so raw CDR records."""
    bag = require(SHARED_DATA / "nebula_vlp16_bag/src/nebula_velodyne/nebula_velodyne/test_resources"
                  "/decoder_ground_truth/vlp16/1673400471837873222")
    with BagReader(bag) as r:
        assert r.topics == {"/velodyne_packets": "velodyne_msgs/msg/VelodyneScan"}
        recs = list(r.records(raw=True))
    assert [x.log_time_ns for x in recs] == [1673400471837873222, 1673400471937957440, 1673400472038371929,
                                             1673400472138016708]
    assert [len(x.msg) for x in recs] == [183648, 183648, 183648, 182432]
    assert bytes(recs[0].msg[:4]) == b"\x00\x01\x00\x00"  # CDR little-endian encapsulation


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_reads_upstream_cdr_test_bag_with_types_from_the_bag(storage):
    """test_msgs types are not in our typestore: their definitions come from the bag itself."""
    bag = require(UPSTREAM / f"rosbag2_tests/resources/{storage}/cdr_test")
    with BagReader(bag) as r:
        assert r.message_counts == {"/test_topic": 3, "/array_topic": 4}
        assert r.duration_ns == 151137181 + 1
        recs = list(r.records())
    assert [x.msg.int32_value for x in recs if x.topic == "/test_topic"] == [123] * 3
    arrays = [x.msg for x in recs if x.topic == "/array_topic"]
    assert all(list(a.string_values) == ["Complex Hello1", "Complex Hello2", "Complex Hello3"] for a in arrays)


def _mcap_messages(path):
    out = []
    with open(path, "rb") as f:
        for schema, channel, message, decoded in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            out.append((channel.topic, schema.name, message.log_time, decoded))
    return out


def test_kitti_bag_decodes_with_the_independent_mcap_decoder(kitti_bag, kitti_dir):
    msgs = _mcap_messages(next(kitti_bag.glob("*.mcap")))
    by_topic: dict[str, list] = {}
    for topic, schema, t, m in msgs:
        by_topic.setdefault(topic, []).append((schema, t, m))
    assert {topics.LIDAR_POINTS, topics.TF_STATIC, topics.GT_OBJECTS, "/sensing/camera/left/image_rect",
            "/sensing/camera/left/camera_info"} <= set(by_topic)
    clouds = by_topic[topics.LIDAR_POINTS]
    assert [c[0] for c in clouds] == ["sensor_msgs/msg/PointCloud2"] * 3
    stamps = [c[2].header.stamp.sec * 10**9 + c[2].header.stamp.nanosec for c in clouds]
    assert np.all(np.diff(stamps) == PERIOD_NS)  # 10 Hz
    assert [c[1] for c in clouds] == stamps  # log time == header stamp
    for (_, _, cloud), fid in zip(clouds, ("000000", "000001", "000002"), strict=True):
        scan = read_velodyne(kitti_dir / f"velodyne/{fid}.bin")
        assert cloud.width == len(scan) and cloud.point_step == 16 and cloud.header.frame_id == "velodyne"
        assert bytes(cloud.data) == scan.astype("<f4").tobytes()
    # frame 000000 comes from another drive than 000001/2: the static tree is re-sent when it changes
    assert len(by_topic[topics.TF_STATIC]) == 2
    tf = by_topic[topics.TF_STATIC][0][2]
    base = next(t for t in tf.transforms if t.child_frame_id == "velodyne")
    assert base.header.frame_id == "base_link" and abs(base.transform.translation.z - 1.73) < 1e-9
    info = by_topic["/sensing/camera/left/camera_info"][1][2]
    img = by_topic["/sensing/camera/left/image_rect"][1][2]
    assert (img.width, img.height, img.encoding) == (1242, 375, "rgb8") and (info.width, info.height) == (1242, 375)
    assert info.k[0] > 700 and info.p[3] == 0.0  # left camera: Tx = 0
    gt = [d.label for d in by_topic[topics.GT_OBJECTS][1][2].detections]
    assert sorted(gt) == ["Car", "Cyclist", "Truck"]  # DontCare dropped
    # image_3 is absent in this data set: no right camera topics
    assert not any(t.startswith("/sensing/camera/right") for t in by_topic)


def test_kitti_converter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="velodyne"):
        convert_kitti(tmp_path, tmp_path / "out", progress=False)


def test_writer_round_trip_through_both_decoders(tmp_path):
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud

    b = default_backend()
    pts = np.arange(40, dtype=np.float32).reshape(10, 4)
    with BagWriter(tmp_path / "bag") as w:
        for i in range(3):
            w.write("/p", topics.POINTCLOUD2, 100 + i, create_xyzi_cloud(pts + i, 100 + i, "lidar", b))
    with BagReader(tmp_path / "bag") as r:
        got = [rec.msg for rec in r.records()]
    assert len(got) == 3 and bytes(got[2].data) == (pts + 2).tobytes()
    with pytest.raises(RuntimeError, match="with BagReader"):  # not opened: say how, not rosbags' internals
        next(BagReader(tmp_path / "bag").records())
    ind = _mcap_messages(tmp_path / "bag" / "bag.mcap")
    assert [m[2] for m in ind] == [100, 101, 102]
