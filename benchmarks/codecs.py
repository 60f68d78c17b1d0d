"""PointCloud2 decode throughput on a real KITTI scan, against memcpy of the same bytes on this machine.

The cloud goes through rosbags' CDR serializer and back first, so ``msg.data`` is a view into a
received buffer, as in a subscriber or bag reader. Reported (GB/s = cloud data bytes / median time):

* ``decode_view_gbps``: ``read_xyzi`` on the standard layout, a read-only (N, 4) float32 view;
* ``decode_copy_gbps``: the same plus ``.copy()``, i.e. an array the caller owns; this is
  ``decode_gbps``, since a view moves no bytes and comparing it with memcpy would flatter it;
* ``memcpy_gbps``: ``np.copyto`` of the same byte count; ``ratio`` = decode_gbps / memcpy_gbps;
* ``nonstd``: a padded layout (x, y, z float32, intensity uint8, ring uint16, point_step 20) through
  ``read_points`` (a view) and ``read_xyzi`` (field-by-field conversion).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from perception_nodes import msgs
from perception_nodes.codecs import create_cloud, create_xyzi_cloud, read_points, read_xyzi

TYPE = "sensor_msgs/msg/PointCloud2"
SCAN = (Path(__file__).resolve().parents[1]
        / "../shared/data/kitti_object_vis/data/object/training/velodyne/000001.bin").resolve()
NONSTD = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4"] * 3 + ["u1", "<u2"],
                   "offsets": [0, 4, 8, 16, 18], "itemsize": 20})


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-touch page faults and caches do not belong to the codec
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def received(msg):
    store = msgs.typestore()
    return store.deserialize_cdr(store.serialize_cdr(msg, TYPE), TYPE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scan", type=Path, default=SCAN, help="KITTI .bin (float32 x4)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    xyzi = np.fromfile(args.scan, dtype="<f4").reshape(-1, 4)
    msg = received(create_xyzi_cloud(xyzi, 0, "velodyne"))
    n_bytes = msg.data.size
    assert np.array_equal(read_xyzi(msg), xyzi)

    src = np.random.default_rng(0).integers(0, 256, n_bytes, dtype=np.uint8)
    dst = np.empty_like(src)
    memcpy = median_s(lambda: np.copyto(dst, src), args.repeats)
    view = median_s(lambda: read_xyzi(msg), args.repeats)
    copy = median_s(lambda: read_xyzi(msg).copy(), args.repeats)

    points = np.zeros(len(xyzi), NONSTD)
    for i, name in enumerate("xyz"):
        points[name] = xyzi[:, i]
    points["intensity"] = np.round(xyzi[:, 3] * 255).astype(np.uint8)
    points["ring"] = np.arange(len(xyzi)) % 64
    other = received(create_cloud(points, 0, "velodyne"))
    other_bytes = other.data.size
    other_points = median_s(lambda: read_points(other), args.repeats)
    other_xyzi = median_s(lambda: read_xyzi(other), args.repeats)

    def gbps(n: int, seconds: float) -> float:
        return round(n / seconds / 1e9, 3)

    result = {
        "points": len(xyzi), "bytes": n_bytes, "repeats": args.repeats,
        "memcpy_gbps": gbps(n_bytes, memcpy),
        "decode_view_gbps": gbps(n_bytes, view), "decode_copy_gbps": gbps(n_bytes, copy),
        "decode_gbps": gbps(n_bytes, copy), "ratio": round(memcpy / copy, 3),
        "nonstd": {"point_step": NONSTD.itemsize, "bytes": other_bytes,
                   "read_points_view_gbps": gbps(other_bytes, other_points),
                   "read_xyzi_gbps": gbps(other_bytes, other_xyzi)},
        "python": platform.python_version(), "numpy": np.__version__,
    }
    print(f"KITTI {len(xyzi)} points, {n_bytes / 1e6:.2f} MB: decode {result['decode_gbps']} GB/s "
          f"vs memcpy {result['memcpy_gbps']} GB/s (ratio {result['ratio']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
