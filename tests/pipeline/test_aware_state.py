"""Checkpoints keep aware's own step/RNG state in aware_state.json (not Hugging Face's trainer_state.json name)."""

import json

import torch

from aware_cli.pipeline import rundir


def _optimizer():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def test_checkpoint_writes_aware_state_json_not_trainer_state_json(tmp_path):
    optimizer, scheduler = _optimizer()
    ckpt = rundir.save_checkpoint(tmp_path, 4, lambda p: (p / "w.txt").write_text("w"), optimizer, scheduler,
                                  {"step": 4, "dual": 0.5})
    assert (ckpt / "aware_state.json").is_file()
    assert not (ckpt / "trainer_state.json").exists()
    manifest = json.loads((ckpt / "COMPLETE").read_text())
    assert "aware_state.json" in manifest["files"]
    state = rundir.load_training_state(ckpt, *_optimizer())
    assert state == {"step": 4, "dual": 0.5}


def test_old_checkpoint_with_trainer_state_json_still_resumes(tmp_path):
    optimizer, scheduler = _optimizer()
    ckpt = rundir.save_checkpoint(tmp_path, 2, lambda p: None, optimizer, scheduler, {"step": 2, "dual": 1.0})
    (ckpt / "aware_state.json").rename(ckpt / "trainer_state.json")  # as written by earlier versions
    state = rundir.load_training_state(ckpt, *_optimizer())
    assert state == {"step": 2, "dual": 1.0}
