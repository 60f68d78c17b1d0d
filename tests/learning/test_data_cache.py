"""The generated-bag cache key: a change of the generator's or (for bags that use it) the realism model's
version must render the bag anew, never reuse a stale one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from perception_nodes.learning.data import generated_bag_name
from perception_nodes.scenario import realism


def test_cache_name_changes_with_the_realism_version_for_realistic_bags(monkeypatch):
    gen = SimpleNamespace(GENERATOR_VERSION=4)
    plain = {"scenario": "urban_street", "seed": 3, "duration_s": 4.0, "lidar": "hdl64", "cameras": False}
    real = {**plain, "realism": "kitti"}
    before = {k: generated_bag_name(v, gen) for k, v in (("plain", plain), ("real", real), ("none", {**plain, "realism": "none"}))}
    assert before["real"] != before["plain"]
    assert before["real"].startswith("urban_street_seed3_4.0s_hdl64_")
    monkeypatch.setattr(realism, "REALISM_VERSION", realism.REALISM_VERSION + 1)
    after = {k: generated_bag_name(v, gen) for k, v in (("plain", plain), ("real", real))}
    assert after["real"] != before["real"]  # the realism model changed: a new bag
    assert after["plain"] == before["plain"]  # its code does not run without realism: the bag stays valid
    # the generator's own version invalidates every bag
    assert generated_bag_name(plain, SimpleNamespace(GENERATOR_VERSION=5)) != before["plain"]


@pytest.mark.parametrize("spec", [None, "none", "None", "", False])
def test_bags_without_realism_keep_their_name_when_the_realism_model_changes(spec, monkeypatch):
    gen = SimpleNamespace(GENERATOR_VERSION=4)
    src = {"scenario": "highway", "seed": 1, "lidar": "vlp32", "realism": spec}
    before = generated_bag_name(src, gen)
    monkeypatch.setattr(realism, "REALISM_VERSION", realism.REALISM_VERSION + 1)
    assert generated_bag_name(src, gen) == before
