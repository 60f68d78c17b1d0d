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

# K-class (Dirichlet) and regression (Normal-Inverse-Gamma) heads for network outputs and losses. They need
# torch, so they load on first use: the geometric occupancy path imports this package and stays numpy-only.
__all__ += ["NIG", "dirichlet", "nig"]


def __getattr__(name: str):  # PEP 562 lazy submodules
    import importlib

    if name in ("dirichlet", "nig"):
        return importlib.import_module(f"perception_nodes.evidential.{name}")
    if name == "NIG":
        return importlib.import_module("perception_nodes.evidential.nig").NIG
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
