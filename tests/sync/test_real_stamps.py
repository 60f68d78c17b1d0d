"""Synchronising real sensor stamps (from the shared data sets; see /work/shared/docs/field-notes.md).

nuScenes v1.0-mini keyframe (log n015-2018-07-24-11-22-45+0800): the LIDAR_TOP sweep and the six
camera images, stamps in µs. tier4/nebula VLP-16 bag: four 10 Hz VelodyneScan messages, header stamps
and bag (receive) timestamps in ns. Both exercise exact integer arithmetic at epoch magnitudes
(~1.5e18 ns, where a double is only good to 256 ns).
"""

from __future__ import annotations

import itertools

import pytest

from perception_nodes.sync import ApproximateTimeSynchronizer, ExactTimeSynchronizer

from .cases import MS, Arrival, check_accounting, replay

US = 1_000
NUSCENES_NAMES = (
    "LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)
NUSCENES_STAMPS_NS = tuple(
    us * US
    for us in (
        1532402927647951, 1532402927612460, 1532402927620339, 1532402927604844,
        1532402927637525, 1532402927647423, 1532402927627893,
    )
)
# nuScenes rates: LiDAR 20 Hz, cameras 12 Hz; lower bounds at 90 % of the periods.
NUSCENES_LOWER_BOUNDS_S = [0.045] + [0.075] * 6

NEBULA_HEADER_STAMPS_NS = (1673400471737763166, 1673400471837960720, 1673400471938157320, 1673400472038354158)
NEBULA_BAG_STAMPS_NS = (1673400471837873222, 1673400471937957440, 1673400472038371929, 1673400472138016708)


def test_nuscenes_keyframe_is_one_set_in_every_arrival_order() -> None:
    for order in itertools.permutations(range(7)):
        sync = ApproximateTimeSynchronizer(7, 10, inter_message_lower_bounds_s=NUSCENES_LOWER_BOUNDS_S)
        outs = [sync.add(i, NUSCENES_STAMPS_NS[i], NUSCENES_NAMES[i]) for i in order]
        # The rate bounds prove optimality as soon as the last of the seven arrives.
        assert all(o == [] for o in outs[:-1])
        [synced] = outs[-1]
        assert synced.messages == NUSCENES_NAMES
        assert synced.stamps_ns == NUSCENES_STAMPS_NS
        assert max(synced.stamps_ns) - min(synced.stamps_ns) == 43_107 * US
        assert sync.pending == (0,) * 7


def test_nuscenes_keyframe_without_rate_bounds_waits_for_the_next_frames() -> None:
    sync = ApproximateTimeSynchronizer(7, 10)
    for i in range(7):
        assert sync.add(i, NUSCENES_STAMPS_NS[i], NUSCENES_NAMES[i]) == []
    out = []
    for i in range(7):  # the next sweep (+50 ms) and the next images (+83.3 ms)
        out += sync.add(i, NUSCENES_STAMPS_NS[i] + (50 * MS if i == 0 else 83_333_333), "next")
    assert [s.stamps_ns for s in out] == [NUSCENES_STAMPS_NS]


@pytest.mark.parametrize("dead", range(1, 7))
def test_nuscenes_keyframe_with_one_dead_camera(dead: int) -> None:
    arrivals = [Arrival(s + 5 * MS, i, s) for i, s in enumerate(NUSCENES_STAMPS_NS) if i != dead]
    sync = ApproximateTimeSynchronizer(
        7, 10, inter_message_lower_bounds_s=NUSCENES_LOWER_BOUNDS_S, input_timeouts_s=[0.1] * 7
    )
    out = replay(sync, arrivals, until_ns=max(NUSCENES_STAMPS_NS) + 1000 * MS)
    [(_, synced)] = out
    assert synced.missing == (dead,)
    assert synced.stamps_ns == tuple(None if i == dead else s for i, s in enumerate(NUSCENES_STAMPS_NS))
    assert sync.omitted == [1 if i == dead else 0 for i in range(7)]
    check_accounting(sync)


def test_nebula_scans_pair_exactly_with_a_derived_topic() -> None:
    """VelodyneScan (0) and a topic derived from it with the same header stamp (e.g. the decoded
    cloud, 20 ms later) pair one to one under ExactTime, stamps preserved to the nanosecond."""
    sync = ExactTimeSynchronizer(2, 4)
    arrivals = [Arrival(b, 0, h) for h, b in zip(NEBULA_HEADER_STAMPS_NS, NEBULA_BAG_STAMPS_NS)]
    arrivals += [Arrival(b + 20 * MS, 1, h) for h, b in zip(NEBULA_HEADER_STAMPS_NS, NEBULA_BAG_STAMPS_NS)]
    out = replay(sync, arrivals)
    assert [s.stamps_ns for _, s in out] == [(h, h) for h in NEBULA_HEADER_STAMPS_NS]
    assert [t for t, _ in out] == [b + 20 * MS for b in NEBULA_BAG_STAMPS_NS]


def test_nebula_scans_with_a_dead_camera_flow_after_the_timeout() -> None:
    """VLP-16 (0) + a camera (1) that never sends, replayed at the bag's receive times."""
    sync = ApproximateTimeSynchronizer(2, 5, input_timeouts_s=[0.15, 0.15])
    arrivals = [Arrival(b, 0, h) for h, b in zip(NEBULA_HEADER_STAMPS_NS, NEBULA_BAG_STAMPS_NS)]
    out = replay(sync, arrivals, poll_period_ns=10 * MS, until_ns=NEBULA_BAG_STAMPS_NS[-1] + 200 * MS)
    # the 10 ms timer ticks at multiples of 10 ms
    first_poll = -(-(NEBULA_BAG_STAMPS_NS[0] + 150 * MS) // (10 * MS)) * (10 * MS)
    assert [(s.stamps_ns, s.missing) for _, s in out] == [((h, None), (1,)) for h in NEBULA_HEADER_STAMPS_NS]
    assert [t for t, _ in out] == [first_poll, first_poll, NEBULA_BAG_STAMPS_NS[2], NEBULA_BAG_STAMPS_NS[3]]
    assert sync.omitted == [0, 4]
