"""Fast DDS shared-memory segments that no running process owns any more, removed.

Why: every DDS participant of the project's large-data profile (``ros/fastdds/large_data_loopback.xml``) maps a
32 MiB segment (and a small one) in ``/dev/shm``. A process that ends without deleting its participant leaves
the segment behind, and tmpfs keeps its pages in RAM until the next reboot. Processes with lifecycle nodes
always end that way here (rclpy 9 keeps their participant and ``gc.freeze`` keeps it to the end; deleting it at
exit can hang: ``ManagedCoreNode.leave_graph``), and so does any process that is killed. Measured here: every
start of a bringup executable or ``perception-stack live`` left two segments, and one run of the ROS tests left
48 (820 MB of RAM). On a vehicle that restarts its stack, that adds up.

The rule is the one of Fast DDS's own ``fastdds shm clean``: a live segment's owner holds an exclusive flock on
its ``fastdds_<id>_el`` file from before it creates the segment until after it removes it, so a segment whose
lock nobody holds is a zombie. A lock file younger than ``min_age_s`` is left alone (its owner may be between
creating and locking it). Ports (``fastdds_port*``, ~50 KB each, shared, reused by Fast DDS) are not touched.
"""

from __future__ import annotations

import fcntl
import re
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ShmCleanup", "remove_zombie_segments", "report_zombie_cleanup"]

SHM_DIR = Path("/dev/shm")
_SEGMENT_LOCK = re.compile(r"^fastdds_[0-9a-z]{16}_el$")


@dataclass(frozen=True)
class ShmCleanup:
    segments: int = 0  # zombie segments removed
    bytes_freed: int = 0  # their allocated size (what tmpfs held in RAM)
    kept: int = 0  # segments with a live owner (or too young to judge)

    def summary(self) -> str:
        return (f"removed {self.segments} Fast DDS shared-memory segment(s) left by processes that have ended "
                f"({self.bytes_freed / 2**20:.0f} MiB of RAM)")


def _locked(path: Path) -> bool:
    """True when some process holds a lock on ``path`` (its owner is alive)."""
    try:
        with open(path, "rb") as fd:  # (as Fast DDS opens it; never recreates a file that went meanwhile)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the owner holds LOCK_EX; released when fd closes
        return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


def remove_zombie_segments(shm_dir: Path = SHM_DIR, min_age_s: float = 10.0) -> ShmCleanup:
    """Remove the Fast DDS segments in ``shm_dir`` whose owner has ended; nothing else is touched."""
    removed = freed = kept = 0
    if not shm_dir.is_dir():
        return ShmCleanup()
    now = time.time()
    for lock in sorted(shm_dir.iterdir()):
        if not _SEGMENT_LOCK.match(lock.name):
            continue
        segment = lock.with_name(lock.name[:-3])
        try:
            young = now - lock.stat().st_mtime < min_age_s
        except OSError:  # gone meanwhile
            continue
        if young or _locked(lock):
            kept += 1
            continue
        try:
            size = segment.stat().st_blocks * 512
            segment.unlink()
        except FileNotFoundError:  # removed meanwhile (another process cleaning at the same moment)
            size = -1
        except OSError:  # not ours to remove (another user's): leave both files
            kept += 1
            continue
        try:
            lock.unlink()
        except OSError:
            pass
        if size >= 0:
            removed += 1
            freed += size
    return ShmCleanup(removed, freed, kept)


def report_zombie_cleanup(shm_dir: Path = SHM_DIR) -> ShmCleanup:
    """:func:`remove_zombie_segments` at a process start, said on stderr when it removed something; never
    fails the start (``PERCEPTION_KEEP_SHM=1`` switches it off)."""
    import os
    import sys

    if os.environ.get("PERCEPTION_KEEP_SHM", "0") not in ("", "0"):
        return ShmCleanup()
    try:
        result = remove_zombie_segments(shm_dir)
    except Exception as exc:  # noqa: BLE001 -- housekeeping only: say it and go on
        print(f"shared-memory cleanup skipped: {exc}", file=sys.stderr, flush=True)
        return ShmCleanup()
    if result.segments:
        print(result.summary(), file=sys.stderr, flush=True)
    return result
