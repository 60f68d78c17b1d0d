"""Checkpoints: safetensors on disk (no pickle), exact round trips, clear errors for damaged files."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch

from perception_nodes.learning.checkpoint import (
    CheckpointError,
    capture_rng,
    decode_state,
    encode_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_checkpoint,
    save_weights,
)


def _trained_objects():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 2, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _save(tmp_path, epoch=3):
    model, opt, sched = _trained_objects()
    path = save_checkpoint(tmp_path / "ckpt", epoch=epoch, global_step=7, model=model, optimizer=opt, scheduler=sched,
                           branch="lidar_occupancy", branch_config={"model": {"widths": [4]}},
                           config={"seed": 1, "optimizer": {"lr": 0.01}}, metrics={"val": {"iou": 0.5}})
    return path, model, opt, sched


def _is_safetensors(path) -> bool:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    return 8 + n <= len(raw) and "__metadata__" in header


def test_files_are_safetensors_never_pickle(tmp_path):
    path, *_ = _save(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "trainer.json", "trainer.safetensors"]
    for name in ("model.safetensors", "trainer.safetensors"):
        raw = (path / name).read_bytes()
        assert not raw.startswith(b"PK") and not raw.startswith(b"\x80"), "zip (torch.save) or pickle header"
        assert _is_safetensors(path / name)
    json.loads((path / "trainer.json").read_text())


def test_round_trip_is_exact_and_uses_no_unpickling(tmp_path, monkeypatch):
    path, model, opt, sched = _save(tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    ck = load_checkpoint(path)
    assert ck.epoch == 3 and ck.global_step == 7 and ck.branch == "lidar_occupancy"
    assert ck.config == {"seed": 1, "optimizer": {"lr": 0.01}} and ck.metrics == {"val": {"iou": 0.5}}
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model_state[k], v)
    model2, opt2, sched2 = _trained_objects()
    for p in model2.parameters():  # make sure loading really overwrites
        p.data.zero_()
    model2.load_state_dict(ck.model_state)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01, foreach=False)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda e: 0.5**e)  # (sets lr; the load below restores it)
    opt2.load_state_dict(ck.optimizer_state)
    sched2.load_state_dict(ck.scheduler_state)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for key in a["state"][i]:
            assert torch.equal(a["state"][i][key], b["state"][i][key])
    assert sched2.last_epoch == sched.last_epoch and sched2.get_last_lr() == sched.get_last_lr()


def test_rng_states_round_trip():
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    scalars, tensors = capture_rng()
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng(json.loads(json.dumps(scalars)), tensors)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_state_encoding_keeps_int_keys_tuples_and_refuses_objects():
    state = {"state": {0: {"step": torch.tensor(3.0)}, 5: {}}, "groups": [{"betas": (0.9, 0.99), "x": None}]}
    skel, tensors = encode_state(state, "opt")
    back = decode_state(json.loads(json.dumps(skel)), tensors)
    assert back["state"].keys() == {0, 5} and back["groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(back["state"][0]["step"], torch.tensor(3.0))
    with pytest.raises(CheckpointError, match="without pickle"):
        encode_state({"f": object()}, "x")


def test_flipped_byte_is_detected(tmp_path):
    path, *_ = _save(tmp_path)
    f = path / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="model.safetensors: SHA-256 mismatch"):
        load_checkpoint(path)


def test_truncated_file_with_matching_sidecar_gives_a_clear_error(tmp_path):
    import hashlib

    path, *_ = _save(tmp_path)
    f = path / "trainer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    side = json.loads((path / "trainer.json").read_text())
    side["files"]["trainer.safetensors"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (path / "trainer.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_rewritten_tensors_are_detected_by_content_hash(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    w = tmp_path / "w.safetensors"
    save_weights(w, {"a": torch.ones(3)}, {"branch": "x"})
    with safe_open(str(w), framework="pt") as f:
        meta = f.metadata()
    save_file({"a": torch.full((3,), 2.0)}, str(w), metadata=meta)  # same metadata, other values
    with pytest.raises(CheckpointError, match="content_sha256"):
        load_weights(w)


def test_corrupt_sidecar_and_missing_folder(tmp_path):
    path, *_ = _save(tmp_path)
    (path / "trainer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable sidecar"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere")


def test_listing_ignores_incomplete_checkpoints(tmp_path):
    _save(tmp_path, epoch=1)
    path2, *_ = _save(tmp_path, epoch=2)
    (tmp_path / "ckpt" / ".epoch_0003.tmp").mkdir()  # an interrupted save
    (tmp_path / "ckpt" / "epoch_0004").mkdir()  # no sidecar: incomplete
    assert [e for e, _ in list_checkpoints(tmp_path / "ckpt")] == [1, 2]
    assert latest_checkpoint(tmp_path / "ckpt") == path2


def test_pt_files_load_only_with_weights_only(tmp_path):
    good = tmp_path / "w.pt"
    torch.save({"state_dict": {"a": torch.arange(3)}}, good)
    tensors, meta = load_weights(good)
    assert torch.equal(tensors["a"], torch.arange(3)) and meta == {}

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"a": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_weights(bad)
