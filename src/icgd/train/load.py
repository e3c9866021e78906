"""Load a trained model from a run folder (``icgd train --out DIR``): safetensors only, nothing is unpickled."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from icgd.errors import CheckpointError, ConfigError
from icgd.train.checkpoint import load_checkpoint
from icgd.train.config import TrainConfig


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """``(model, config)``: the model of the newest verified checkpoint in `run_dir`, in eval mode on `device`, and
    the run's :class:`~icgd.train.TrainConfig` (from ``config.json``). :class:`~icgd.errors.CheckpointError` names
    the problem when the folder is missing or does not hold a trained model."""
    from icgd.train.loop import build_model

    folder = Path(run_dir)
    if not folder.is_dir():
        raise CheckpointError(f"no run folder at {folder}; pass the --out folder of an earlier `icgd train`")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a trained model (no config.json); pass the --out folder of an "
                              f"earlier `icgd train`")
    try:
        cfg = TrainConfig.load(folder / "config.json")
    except ConfigError as exc:
        raise CheckpointError(f"{folder} is not a trained model: {exc}") from None
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "device": str(device)})
    ck = load_checkpoint(folder, device=device)
    model = build_model(cfg)
    try:
        model.load_state_dict(ck.model)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint in {folder} does not fit the model of its config.json: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    return model.to(device=torch.device(device)).eval(), cfg
