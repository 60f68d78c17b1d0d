"""The camera BEV evaluation's inputs: a training run folder or a packaged weights folder (default the
packaged one), and a clear error (not a traceback) for a folder that is neither."""

from __future__ import annotations

import pytest
import torch

from perception_nodes.learning import camera_bev_eval as ev
from perception_nodes.learning.branches.camera_bev import CameraBevBranch
from perception_nodes.models.camera_bev import NETWORK, load_camera_bev
from perception_nodes.models.weights_io import default_weights_dir


def test_the_packaged_weights_are_scored_by_default():
    branch, model, train = ev.load_for_eval()
    packaged, side = load_camera_bev(default_weights_dir(NETWORK))
    assert isinstance(branch, CameraBevBranch) and branch.net_config == model.config == packaged.config
    for k, v in packaged.state_dict().items():  # the very weights the node loads
        assert torch.equal(model.state_dict()[k], v), k
    # the training frames of the constant-rate baseline are the sidecar's training config's
    assert [s.generate for s in train] == [s["generate"] for s in side["training"]["config"]["data"]["train"]]
    assert {s.generate["seed"] for s in train}.isdisjoint({s["generate"]["seed"] for s in ev.TEST_SOURCES})


def test_a_folder_that_is_neither_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("nothing to score")
    for argv, said in ((["--weights", str(tmp_path)], "is not a camera_bev weights folder"),
                       (["--run", str(tmp_path)], "is not a training run folder"),
                       (["--run", str(default_weights_dir(NETWORK))], "use --weights"),
                       (["--package", str(tmp_path / "p")], "--package needs --run")):
        with pytest.raises(SystemExit) as exc:
            ev.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
