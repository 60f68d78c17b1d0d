"""Training data from bags: resolve (and generate) the bags of a split, turn every used frame into a
branch sample, keep the samples in memory.

* ``{path: DIR}`` sources are read as they are; ``{generate: {...}}`` sources are rendered once with
  ``perception_nodes.scenario.generate.generate_bag`` into the cache folder (name from the scenario, seed,
  duration and LiDAR plus a hash of all arguments and of the generator's and, with realism on, the realism
  model's version: :func:`generated_bag_name`; an interrupted generation leaves only a ``.tmp``
  folder of its own; runs rendering the same bag at once do not disturb each other); ``{fixture: {...}}`` sources likewise with
  :func:`perception_nodes.learning.fixtures.write_fixture_bag`.
* Frames come from :func:`read_frames`: each LiDAR cloud with the ground truth of its stamp (objects and
  the occupancy/visibility grids, in ``Frame.extras``), as :class:`~perception_nodes.datasets.Frame`
  objects like :func:`perception_nodes.datasets.read_bag_frames` gives. (That reader completes a frame
  as soon as the cloud and the objects are in, and the generator logs the grids after the objects, so
  it would drop the grids.) The branch turns each frame into features + targets
  (:meth:`~perception_nodes.learning.branches.base.Branch.prepare_frame`); frames without the branch's
  ground truth are skipped and counted.
* Real data in the shared data folder is refused for training (evaluation only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from perception_nodes.datasets.frame import Frame
from perception_nodes.learning.branches.base import Branch, Sample
from perception_nodes.learning.config import BagSource

__all__ = ["DataError", "SHARED_DATA", "SplitData", "default_cache_dir", "describe_split", "generated_bag_name",
           "load_split", "read_frames", "resolve_source"]

#: the shared real-data folder beside the checkout (evaluation only, never training)
SHARED_DATA = (Path(__file__).resolve().parents[3] / "shared" / "data").resolve()


class DataError(ValueError):
    """A data split that cannot be built (missing bag, no usable frame, real data for training)."""


def default_cache_dir() -> Path:
    """``$PERCEPTION_NODES_CACHE`` (or ``$XDG_CACHE_HOME``, ``~/.cache``) ``/perception_nodes/train_bags``."""
    from perception_nodes.scenario.bag import cache_dir

    return cache_dir() / "train_bags"


def _is_shared_real_data(path: Path) -> bool:
    try:
        path.resolve().relative_to(SHARED_DATA)
    except ValueError:
        return False
    return True


def _key(kind: str, kwargs: dict[str, Any], version: Any) -> str:
    blob = json.dumps({"kind": kind, "version": version, "kwargs": kwargs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _realism_requested(realism: Any) -> bool:
    if realism is None or realism is False:
        return False
    if isinstance(realism, str):
        return realism.strip().lower() not in ("", "none", "off")
    return True


def generated_bag_name(kwargs: Mapping[str, Any], gen: Any = None) -> str:
    """Cache folder name of a generated bag: scenario, seed, duration, LiDAR and a hash of every argument
    and of the versions of the code that renders it: the generator's, and the realism model's
    (``REALISM_VERSION``) when realism knobs are on, so a change of either renders the bag anew instead of
    reusing a stale one. Bags without realism keep their names when only the realism model changes (its code
    does not run for them)."""
    if gen is None:
        from perception_nodes.scenario import generate as gen
    version: Any = getattr(gen, "SCENARIO_VERSION", None) or getattr(gen, "GENERATOR_VERSION", None)
    if _realism_requested(kwargs.get("realism")):
        from perception_nodes.scenario import realism

        version = {"generator": version, "realism": realism.REALISM_VERSION}
    return (f"{kwargs.get('scenario', 'urban_street')}_seed{kwargs.get('seed', 0)}_{kwargs.get('duration_s', 10.0)}s_"
            f"{kwargs.get('lidar', 'hdl64')}_{_key('generate', dict(kwargs), version)}")


def _generate_into(target: Path, make: Any) -> Path:
    """Run ``make(out_path)`` into a temporary folder of its own, then move it into place.

    Two runs may render the same bag at once (two evaluations started together): each writes into its own
    temporary folder, and the first to finish puts its bag in place; a later one keeps that bag and drops
    its own, so a bag another process may already be reading is never removed or replaced."""
    if (target / "metadata.yaml").is_file():
        return target
    tmp_parent = target.parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp_parent.mkdir(parents=True)
    try:
        make(tmp_parent / target.name)  # rosbags names the storage file after the folder: keep the name
        if not (target / "metadata.yaml").is_file():
            shutil.rmtree(target, ignore_errors=True)  # an incomplete folder of an interrupted run
            try:
                os.replace(tmp_parent / target.name, target)
            except OSError:  # another run put its bag there in between
                if not (target / "metadata.yaml").is_file():
                    raise
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    return target


def describe_split(sources: Sequence[BagSource]) -> dict[str, Any]:
    """Name a split by what it holds: scenario types and LiDAR models (``"recorded"`` / ``"fixture"`` for
    ``path`` / ``fixture`` sources), so held-out evaluations say what was held out."""
    scenarios, lidars = set(), set()
    for src in sources:
        if src.generate is not None:
            scenarios.add(str(src.generate.get("scenario", "urban_street")))
            lidars.add(str(src.generate.get("lidar", "hdl64")))
        elif src.fixture is not None:
            scenarios.add("fixture")
            lidars.add(str((src.fixture or {}).get("lidar", "fixture")))
        else:
            scenarios.add("recorded")
    sc, li = sorted(scenarios), sorted(lidars)
    return {"scenarios": sc, "lidars": li, "name": f"{'+'.join(sc) or '-'} / {'+'.join(li) or '-'}"}


def resolve_source(src: BagSource, cache_dir: Path, *, progress: bool = True, role: str = "train") -> Path:
    """The bag folder of a source, generating it into ``cache_dir`` first when needed."""
    if src.path is not None:
        path = Path(src.path).expanduser()
        if role == "train" and _is_shared_real_data(path):
            raise DataError(f"{path}: real data from {SHARED_DATA} is for evaluation only, never for training")
        if not path.exists():
            raise DataError(f"{path}: no such bag")
        return path
    if src.generate is not None:
        kwargs = dict(src.generate)
        try:
            from perception_nodes.scenario import generate as gen
        except ImportError as exc:
            raise DataError("data source 'generate' needs perception_nodes.scenario.generate.generate_bag, "
                            f"which this checkout lacks ({exc}); use 'path' or 'fixture' sources") from exc
        kwargs.setdefault("cameras", False)  # LiDAR branches need no images; much faster to render
        name = generated_bag_name(kwargs, gen)
        if isinstance(kwargs.get("faults"), Mapping):
            from perception_nodes.scenario.faults import Faults

            kwargs["faults"] = Faults(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["faults"].items()})
        if isinstance(kwargs.get("camera_resolution"), list):
            kwargs["camera_resolution"] = tuple(kwargs["camera_resolution"])
        return _generate_into(cache_dir / name, lambda out: gen.generate_bag(out, progress=progress, **kwargs))
    from perception_nodes.learning import fixtures

    kwargs = dict(src.fixture or {})
    name = f"fixture_seed{kwargs.get('seed', 0)}_{_key('fixture', kwargs, fixtures.FIXTURE_VERSION)}"
    return _generate_into(cache_dir / name, lambda out: fixtures.write_fixture_bag(out, **kwargs))


#: ground-truth topics a frame waits for (those the bag has)
from perception_nodes.datasets.bag import read_bag_frames as read_frames  # noqa: E402


def _truth_by_stamp(bag: Path, wanted: tuple[str, ...]) -> dict[str, dict[int, Any]]:
    """Messages of the extra ground-truth topics a branch asks for (``extra_truth_topics``), by header stamp.

    :func:`read_frames` attaches only the objects and the grids; per-frame targets such as the lane path
    or the curvature are looked up here and attached by stamp (:func:`_attach_truth`)."""
    if not wanted:
        return {}
    from perception_nodes.bags import BagReader
    from perception_nodes.codecs.backend import stamp_to_ns

    out: dict[str, dict[int, Any]] = {}
    with BagReader(bag) as reader:
        present = [t for t in wanted if t in reader.topics]
        if not present:
            return {}
        for rec in reader.records(topics=present):
            out.setdefault(rec.topic, {})[stamp_to_ns(rec.msg.header.stamp)] = rec.msg
    return out


def _attach_truth(frame: Frame, extra: dict[str, dict[int, Any]], tolerance_ns: int = 50_000_000) -> None:
    """Put the extra ground truth nearest to the frame's ground-truth stamp into ``frame.extras``."""
    from perception_nodes import topics
    from perception_nodes.codecs.backend import stamp_to_ns

    grid = frame.extras.get(topics.GT_OCCUPANCY)
    stamp = stamp_to_ns(grid.header.stamp) if grid is not None else frame.stamp_ns
    for topic, by_stamp in extra.items():
        if not by_stamp:
            continue
        best = min(by_stamp, key=lambda s: abs(s - stamp))
        if abs(best - stamp) <= tolerance_ns:
            frame.extras[topic] = by_stamp[best]


@dataclass
class SplitData:
    """Samples of one split plus where they came from."""

    samples: list[Sample]
    bags: list[Path]
    skipped: int


def load_split(sources: Sequence[BagSource], branch: Branch, *, cache_dir: Path, role: str,
               progress: bool = True) -> SplitData:
    """Every used frame of ``sources`` as branch samples, in source order (see the module docstring)."""
    from perception_nodes import topics
    from perception_nodes.bags import BagReader

    samples: list[Sample] = []
    bags: list[Path] = []
    skipped = 0
    for src in sources:
        bag = resolve_source(src, cache_dir, progress=progress, role=role)
        bags.append(bag)
        with BagReader(bag) as reader:
            total = reader.message_counts.get(topics.LIDAR_POINTS, 0)
        limit = -(-total // src.stride)
        if src.max_frames:
            limit = min(limit, src.max_frames)
        extra = _truth_by_stamp(bag, tuple(getattr(branch, "extra_truth_topics", ())))
        used = 0
        bar = tqdm(total=limit, desc=f"{role} features {bag.name}", unit="frame", disable=not progress, leave=False)
        try:
            for i, frame in enumerate(read_frames(bag)):
                if i % src.stride:
                    continue
                if extra:
                    _attach_truth(frame, extra)
                sample = branch.prepare_frame(frame)
                if sample is None:
                    skipped += 1
                    continue
                samples.append(sample)
                used += 1
                bar.update()
                if src.max_frames and used >= src.max_frames:
                    break
        finally:
            bar.close()
        if used == 0:
            raise DataError(f"{bag}: no frame with the ground truth branch {branch.name!r} needs "
                            "(generated bags carry /ground_truth/occupancy and its visibility)")
    return SplitData(samples=samples, bags=bags, skipped=skipped)
