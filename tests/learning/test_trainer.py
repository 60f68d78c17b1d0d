"""The training loop on tiny fixture bags: learning, determinism, resume equivalence, evaluation, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from perception_nodes.config import ConfigError
from perception_nodes.learning.checkpoint import CheckpointError, list_checkpoints, load_weights
from perception_nodes.learning.config import load_config
from perception_nodes.learning.data import SHARED_DATA, DataError
from perception_nodes.learning.trainer import load_trained, train
from tests.learning.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_weights(run / "model.safetensors")[0]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _strip_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in history]


@pytest.fixture(scope="module")
def trained(bag_cache, tmp_path_factory):
    """One longer run (12 epochs of 4 steps) shared by the learning and vacuity tests."""
    out = tmp_path_factory.mktemp("run") / "long"
    res = train(tiny_config(bag_cache, epochs=12, batch_size=1), out=out, progress=False)
    return res


def test_training_reduces_the_loss(trained):
    h = trained.history
    assert [r["epoch"] for r in h] == list(range(1, 13))
    # Bayes-risk CE on the training set and on the validation set both go down
    assert h[-1]["train"]["ce"] < 0.7 * h[0]["train"]["ce"]
    assert h[-1]["val"]["ce"] < 0.7 * h[0]["val"]["ce"]
    assert h[0]["train"]["kl_weight"] < h[-1]["train"]["kl_weight"] == 1.0
    assert h[0]["lr"] > h[-1]["lr"]  # cosine schedule


def test_invisible_cells_keep_higher_vacuity(trained):
    val = trained.history[-1]["val"]
    assert 0.0 < val["visible_fraction"] < 1.0
    assert val["vacuity_invisible"] > val["vacuity_visible"] + 0.15
    assert val["vacuity_invisible"] > 0.6  # started at 2 / (2 + 2·softplus(-2)) ≈ 0.89


def test_metrics_are_logged_per_epoch(trained):
    lines = (trained.run_dir / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert _strip_times(recs) == _strip_times(trained.history)
    keys = {"iou", "precision", "recall", "ece", "ce", "vacuity_visible", "vacuity_invisible", "ism_iou", "ism_ece"}
    assert keys <= recs[-1]["val"].keys()
    assert 0.0 <= recs[-1]["val"]["ece"] <= 1.0
    cfg = json.loads((trained.run_dir / "config.json").read_text())
    assert cfg["branch"] == "lidar_occupancy" and cfg["epochs"] == 12


def test_same_seed_same_weights_other_seed_other_weights(bag_cache, tmp_path):
    a = train(tiny_config(bag_cache), out=tmp_path / "a", progress=False)
    b = train(tiny_config(bag_cache), out=tmp_path / "b", progress=False)
    c = train(tiny_config(bag_cache, seed=1), out=tmp_path / "c", progress=False)
    assert _same(_weights(a.run_dir), _weights(b.run_dir))
    assert _strip_times(a.history) == _strip_times(b.history)
    assert not _same(_weights(a.run_dir), _weights(c.run_dir))


class _Crash(RuntimeError):
    pass


def test_resume_after_interruption_equals_an_uninterrupted_run(bag_cache, tmp_path):
    cfg = tiny_config(bag_cache, epochs=3)
    straight = train(cfg, out=tmp_path / "straight", progress=False)

    def crash_after_first(epoch, record):
        if epoch == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train(cfg, out=tmp_path / "resumed", progress=False, on_epoch_end=crash_after_first)
    assert [e for e, _ in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [1]
    # perturb every global generator: a correct resume restores them from the checkpoint
    torch.manual_seed(1234)
    np.random.seed(1234)
    resumed = train(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.resumed_from == 1 and resumed.epochs == 3
    assert _same(_weights(straight.run_dir), _weights(resumed.run_dir))
    assert _strip_times(straight.history) == _strip_times(resumed.history)
    # the optimizer states of the last checkpoints agree too
    s = load_weights(straight.run_dir / "checkpoints" / "epoch_0003" / "trainer.safetensors")[0]
    r = load_weights(resumed.run_dir / "checkpoints" / "epoch_0003" / "trainer.safetensors")[0]
    assert _same({k: v for k, v in s.items() if k.startswith("optimizer/")},
                 {k: v for k, v in r.items() if k.startswith("optimizer/")})


def test_extending_a_finished_run_with_more_epochs(bag_cache, tmp_path):
    train(tiny_config(bag_cache, epochs=1), out=tmp_path / "r", progress=False)
    more = train(tiny_config(bag_cache, epochs=1), out=tmp_path / "r", resume=True, epochs=2, progress=False)
    assert more.resumed_from == 1 and [r["epoch"] for r in more.history] == [1, 2]


def test_existing_run_needs_resume_and_an_unchanged_config(bag_cache, tmp_path):
    train(tiny_config(bag_cache, epochs=1), out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_config(bag_cache, epochs=1), out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match=r"optimizer\.lr: 0\.01 -> 0\.02"):
        train(tiny_config(bag_cache, epochs=2, optimizer={"lr": 0.02}), out=tmp_path / "r", resume=True, progress=False)


def test_resume_from_a_tampered_checkpoint_fails_clearly(bag_cache, tmp_path):
    train(tiny_config(bag_cache, epochs=1), out=tmp_path / "r", progress=False)
    f = tmp_path / "r" / "checkpoints" / "epoch_0001" / "trainer.safetensors"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="trainer.safetensors: SHA-256 mismatch"):
        train(tiny_config(bag_cache, epochs=2), out=tmp_path / "r", resume=True, progress=False)


def test_trained_model_loads_and_predicts(trained):
    from perception_nodes.datasets import read_bag_frames
    from perception_nodes.learning.data import resolve_source

    branch, model = load_trained(trained.run_dir)
    assert branch.name == "lidar_occupancy" and not model.training
    src = load_config(tiny_config(Path("unused"))).data.val[0]
    bag = resolve_source(src, Path(json.loads((trained.run_dir / "config.json").read_text())["data"]["cache_dir"]))
    frame = next(read_bag_frames(bag))
    from perception_nodes.calibration import transform_points

    grid = branch.predict(model, transform_points(frame.lidar_to_base, frame.points), frame.lidar_to_base[:3, 3])
    assert grid.occupied.shape == grid.free.shape == branch.grid.shape
    assert np.all(grid.occupied >= 0) and np.all(grid.free >= 0)
    assert 0.0 < float(grid.vacuity().mean()) < 1.0


def test_real_data_is_refused_for_training(bag_cache, tmp_path):
    cfg = tiny_config(bag_cache)
    cfg["data"]["train"] = [{"path": str(SHARED_DATA / "rosbag2_test_bags")}]
    with pytest.raises(DataError, match="evaluation only"):
        train(cfg, out=tmp_path / "r", progress=False)


def test_bag_without_ground_truth_grids_is_a_clear_error(bag_cache, tmp_path):
    from perception_nodes import topics
    from perception_nodes.bags.writer import BagWriter
    from perception_nodes.calibration import load_rig, tf_message
    from perception_nodes.codecs.backend import default_backend
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud

    backend = default_backend()
    bag = tmp_path / "lidar_only"
    with BagWriter(bag) as w:  # what a recording or a converted real-data bag looks like: no grids
        w.write(topics.TF_STATIC, topics.TF_MESSAGE, 1, tf_message(load_rig("kitti_hdl64.yaml").as_list(), 1, backend))
        for i in range(2):
            pts = np.random.default_rng(i).normal(size=(100, 4)).astype(np.float32)
            w.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, 10 + i, create_xyzi_cloud(pts, 10 + i, "velodyne", backend))
    cfg = tiny_config(bag_cache)
    cfg["data"]["train"] = [{"path": str(bag)}]
    with pytest.raises(DataError, match="no frame with the ground truth"):
        train(cfg, out=tmp_path / "r", progress=False)


def test_config_validation(bag_cache):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config({**tiny_config(bag_cache), "epoch": 3})
    with pytest.raises(ConfigError, match="not 'stereo'"):
        load_config(tiny_config(bag_cache), branch="stereo")
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config({**tiny_config(bag_cache), "data": {"train": [{"path": "a", "fixture": {}}]}})
    with pytest.raises(ConfigError, match="model"):
        train({**tiny_config(bag_cache), "model": {"widths": [8], "depth": 3}}, progress=False)
    with pytest.raises(ValueError, match="unknown branch"):
        load_config({"branch": "nope", "data": {"train": ["x"]}})


def test_shipped_config_parses():
    from perception_nodes.learning.branches import get_branch

    cfg = load_config(REPO / "configs/train/lidar_occupancy.yaml", branch="lidar_occupancy")
    branch = get_branch(cfg.branch)(cfg.branch_sections)
    assert branch.grid.shape == (128, 128) and cfg.data.val and not any(s.path for s in cfg.data.train)


def test_cli_entry_point(bag_cache, tmp_path, capsys):
    from perception_nodes.learning.cli import train_main

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config(bag_cache, epochs=1)))
    assert train_main("lidar_occupancy", cfg_file, out=tmp_path / "run", resume=False, epochs=None, progress=False) == 0
    out = capsys.readouterr().out
    assert "1 epoch(s)" in out and "validation: iou" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_generated_scenario_bags_feed_the_trainer(bag_cache, tmp_path):
    pytest.importorskip("perception_nodes.scenario.generate")
    gen = {"scenario": "urban_street", "duration_s": 0.3, "lidar": "vlp16", "cameras": False}
    cfg = tiny_config(bag_cache, epochs=1)
    cfg["data"]["train"] = [{"generate": {**gen, "seed": 3}}]
    cfg["data"]["val"] = [{"generate": {**gen, "seed": 4, "faults": {"timestamp_jitter_s": 0.01}}}]
    res = train(cfg, out=tmp_path / "r", progress=False)
    val = res.history[-1]["val"]
    # the generator's grids (80 m at 0.25 m) were found for every frame and pooled onto the 24 m grid
    assert 0.0 < val["visible_fraction"] < 1.0 and 0.0 < val["occupied_fraction"] < 1.0
    assert len(list(bag_cache.glob("urban_street_seed3_0.3s_vlp16_*"))) == 1  # cached for the next run


def test_init_from_previous_weights(trained, bag_cache, tmp_path):
    src = trained.run_dir / "model.safetensors"
    res = train(tiny_config(bag_cache, epochs=1, init_from=str(src), optimizer={"lr": 1e-12}), out=tmp_path / "ft",
                progress=False)
    a, b = _weights(trained.run_dir), _weights(res.run_dir)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    bad = tmp_path / "other.safetensors"
    from perception_nodes.learning.checkpoint import save_weights

    save_weights(bad, {"head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="do not fit"):
        train(tiny_config(bag_cache, epochs=1, init_from=str(bad)), out=tmp_path / "bad", progress=False)


def test_cli_module_is_torch_free_and_lists_every_branch():
    import subprocess
    import sys

    code = ("import sys; import perception_nodes.learning.cli as c; "
            "print('torch' in sys.modules, ','.join(c.BRANCH_NAMES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    from perception_nodes.learning.branches import BRANCHES

    assert out.split() == ["False", ",".join(sorted(BRANCHES))]


def test_resuming_a_finished_run_only_rewrites_the_model(bag_cache, tmp_path):
    first = train(tiny_config(bag_cache, epochs=1), out=tmp_path / "r", progress=False)
    (tmp_path / "r" / "model.safetensors").unlink()
    again = train(tiny_config(bag_cache, epochs=1), out=tmp_path / "r", resume=True, progress=False)
    assert again.epochs == 1 and again.epoch_seconds == [] and _strip_times(again.history) == _strip_times(first.history)
    assert _same(load_weights(tmp_path / "r" / "checkpoints" / "epoch_0001" / "model.safetensors")[0], _weights(again.run_dir))
