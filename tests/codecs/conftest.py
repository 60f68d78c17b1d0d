"""Shared fixtures for the codec tests: the real-data folder, a KITTI scan, the typestore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perception_nodes import msgs

#: /work/shared/data next to the checkout: the repository's parent folder holds ``shared/``.
SHARED_DATA = (Path(__file__).resolve().parents[2] / "../shared/data").resolve()
KITTI_SCAN = SHARED_DATA / "kitti_object_vis/data/object/training/velodyne/000001.bin"


@pytest.fixture(scope="session")
def kitti_scan() -> np.ndarray:
    """KITTI object training scan 000001 as an (N, 4) float32 array [x, y, z, reflectance]."""
    if not KITTI_SCAN.is_file():
        pytest.skip(f"real data not found at {KITTI_SCAN} (see shared/data/README.md)")
    return np.fromfile(KITTI_SCAN, dtype="<f4").reshape(-1, 4)


@pytest.fixture(scope="session")
def store():
    return msgs.typestore()


@pytest.fixture(scope="session")
def cdr_roundtrip(store):
    """Serialize a rosbags message to CDR and back; also assert re-serializing gives the same bytes."""

    def roundtrip(msg, typename: str):
        raw = store.serialize_cdr(msg, typename)
        back = store.deserialize_cdr(raw, typename)
        assert bytes(store.serialize_cdr(back, typename)) == bytes(raw)
        return back

    return roundtrip
