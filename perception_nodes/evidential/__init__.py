"""Evidential (subjective-logic) primitives shared by the occupancy pipeline and later fusion stages."""

from perception_nodes.evidential.beta import (
    PRIOR_WEIGHT,
    as_opinion,
    belief,
    conflict,
    cumulative_fusion,
    discount,
    disbelief,
    expected_probability,
    vacuity,
)

__all__ = [
    "PRIOR_WEIGHT",
    "as_opinion",
    "belief",
    "conflict",
    "cumulative_fusion",
    "discount",
    "disbelief",
    "expected_probability",
    "vacuity",
]
