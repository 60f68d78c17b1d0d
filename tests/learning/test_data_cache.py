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


def test_two_runs_rendering_the_same_bag_at_once_keep_the_first_finished(tmp_path):
    """A second render of the same bag, finishing while the first is still writing (two evaluations started
    together), puts its bag in place; the first then keeps that bag instead of replacing it under a reader;
    no temporary folder is left behind."""
    from perception_nodes.learning.data import _generate_into

    target = tmp_path / "cache" / "bag_a"
    target.parent.mkdir()

    def write(out, tag):
        out.mkdir()
        (out / "bag_a.mcap").write_text(tag)
        (out / "metadata.yaml").write_text(tag)

    def first(out):
        _generate_into(target, lambda o: write(o, "second"))  # the other run finishes in between
        assert (target / "metadata.yaml").read_text() == "second"
        write(out, "first")

    assert _generate_into(target, first) == target
    assert (target / "metadata.yaml").read_text() == "second" and (target / "bag_a.mcap").read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["bag_a"]
    # a cached bag is returned as it is, without rendering
    assert _generate_into(target, lambda o: (_ for _ in ()).throw(AssertionError("rendered again"))) == target
