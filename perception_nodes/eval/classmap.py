"""Dataset labels -> the stack's detection classes, as data (``config/detection_eval.yaml``).

Datasets label more than a detector scores (KITTI: Van, Truck, Tram, Misc, DontCare; generated scenes:
Pole, Wall, Building; nuScenes: ten classes). Scoring them all fails (no IoU threshold for "Pole") or
misleads (a Truck is not a missed car). Each label is one of:

* mapped to a class — scored as that class;
* a *don't-care* region of a class — KITTI's treatment of Van for Car and Person_sitting for Pedestrian:
  it absorbs one detection of the class without an FP and is never a miss;
* unmapped — invisible to scoring, but counted so nothing leaves the evaluation silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from perception_nodes.boxes import Box3D

__all__ = ["ClassMap", "MappedBoxes"]


@dataclass
class MappedBoxes:
    """Boxes of one frame after the class map: scored boxes carry the stack class as label.

    ``dont_care[k]`` is True for boxes kept as ignored regions of their (mapped) class.
    ``unmapped`` counts dropped boxes per original label.
    """

    boxes: list[Box3D] = field(default_factory=list)
    dont_care: list[bool] = field(default_factory=list)
    unmapped: Counter = field(default_factory=Counter)
    dont_care_labels: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class ClassMap:
    """``mapping``: dataset label -> class; ``dont_care``: dataset label -> class it is ignored for."""

    classes: tuple[str, ...]
    mapping: Mapping[str, str]
    dont_care: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, cls in (*self.mapping.items(), *self.dont_care.items()):
            if cls not in self.classes:
                raise ValueError(f"class map: {label!r} -> {cls!r}, which is not one of {self.classes}")

    @classmethod
    def from_dict(cls, classes: Iterable[str], entries: Mapping[str, Any]) -> ClassMap:
        """Parse the YAML form: ``Label: class``, ``Label: {dont_care: class}`` or ``Label: null``."""
        mapping: dict[str, str] = {}
        dont_care: dict[str, str] = {}
        for label, v in (entries or {}).items():
            if v is None:
                continue
            if isinstance(v, str):
                mapping[str(label)] = v
            elif isinstance(v, Mapping) and set(v) == {"dont_care"} and isinstance(v["dont_care"], str):
                dont_care[str(label)] = v["dont_care"]
            else:
                raise ValueError(f"class map entry {label!r}: expected a class name, "
                                 f"{{dont_care: class}} or null, got {v!r}")
        return cls(classes=tuple(classes), mapping=mapping, dont_care=dont_care)

    def map_boxes(self, boxes: Iterable[Box3D], *, predictions: bool = False) -> MappedBoxes:
        """Relabel a frame's boxes; detections already named by a class are kept as they are.

        Don't-care regions only exist in ground truth: a detection with a don't-care label is dropped
        and counted as unmapped.
        """
        out = MappedBoxes()
        for b in boxes:
            if predictions and b.label in self.classes:
                out.boxes.append(b)
                out.dont_care.append(False)
            elif b.label in self.mapping:
                out.boxes.append(replace(b, label=self.mapping[b.label]))
                out.dont_care.append(False)
            elif b.label in self.dont_care and not predictions:
                out.boxes.append(replace(b, label=self.dont_care[b.label]))
                out.dont_care.append(True)
                out.dont_care_labels[b.label] += 1
            else:
                out.unmapped[b.label] += 1
        return out
