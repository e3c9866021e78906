"""Crash-safe checkpoints: atomic replacement, checksum verification, recovery from every interrupted state."""

import json
import os

import pytest
import torch

from icgd.errors import CheckpointError
from icgd.train.checkpoint import (META_FILE, MODEL_FILE, STATE_FILE, has_checkpoint, load_checkpoint,
                                   optimizer_tensors, restore_optimizer, save_checkpoint)


def _save(folder, step):
    save_checkpoint(folder, step=step, model={"w": torch.full((3,), float(step))},
                    state={"m": torch.arange(step + 1.0)}, meta={"note": f"step {step}"})


def test_roundtrip_and_no_leftovers(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 2 and torch.equal(ck.model["w"], torch.full((3,), 2.0)) and ck.meta == {"note": "step 2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MODEL_FILE, STATE_FILE, META_FILE])


def test_corrupt_file_is_detected(tmp_path):
    _save(tmp_path, 1)
    with open(tmp_path / MODEL_FILE, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)
    assert not has_checkpoint(tmp_path)


@pytest.mark.parametrize("moved", [[], [MODEL_FILE], [MODEL_FILE, STATE_FILE], [MODEL_FILE, STATE_FILE, META_FILE]])
def test_recovers_from_a_crash_during_the_swap(tmp_path, moved):
    """Simulate a kill after the new files are written and some current files were renamed to .prev."""
    _save(tmp_path, 1)
    _save(tmp_path / "new", 2)
    for name in [MODEL_FILE, STATE_FILE, META_FILE]:
        os.replace(tmp_path / "new" / name, tmp_path / (name + ".tmp"))
    for name in moved:
        os.replace(tmp_path / name, tmp_path / (name + ".prev"))
    ck = load_checkpoint(tmp_path)
    assert ck.step == 2  # the complete new checkpoint (all .tmp files verified) wins
    (tmp_path / (META_FILE + ".tmp")).unlink()  # without the new record, the old checkpoint is found
    assert load_checkpoint(tmp_path).step == 1


def test_truncated_tmp_files_fall_back_to_the_old_checkpoint(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / (MODEL_FILE + ".tmp")).write_bytes(b"partial")
    (tmp_path / (META_FILE + ".tmp")).write_text('{"step": 9, "sha256": {')
    assert load_checkpoint(tmp_path).step == 1


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no run folder"):
        load_checkpoint(tmp_path / "nope")


def test_meta_is_plain_json_with_checksums(tmp_path):
    _save(tmp_path, 3)
    record = json.loads((tmp_path / META_FILE).read_text())
    assert record["step"] == 3 and set(record["sha256"]) == {MODEL_FILE, STATE_FILE}


def test_optimizer_state_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, rest = optimizer_tensors(opt)
    save_checkpoint(tmp_path, step=3, model=model.state_dict(), state=tensors, meta={"optimizer": rest})
    ck = load_checkpoint(tmp_path)
    model2 = torch.nn.Linear(3, 2)
    model2.load_state_dict(ck.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    restore_optimizer(opt2, ck.state, ck.meta["optimizer"])
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
