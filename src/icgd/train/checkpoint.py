"""Crash-safe checkpoints: tensors in safetensors, metadata in JSON, never pickle.

A checkpoint of a run folder is three files::

    model.safetensors   the model's parameters and buffers
    state.safetensors   optimizer tensors (and any other tensor state)
    state.json          step, config hash, non-tensor state, and the SHA-256 of both tensor files

**Writing** (:func:`save_checkpoint`): each file is written to ``NAME.tmp`` in the same folder, flushed and
fsync'ed; the current files are renamed to ``NAME.prev``; the new ones take their place with ``os.replace``
(atomic on POSIX), ``state.json`` last; the folder is fsync'ed; only then are the ``.prev`` files removed. A crash at
any moment leaves one complete checkpoint, old or new, among the ``NAME``, ``NAME.prev`` and ``NAME.tmp`` files.

**Loading** (:func:`load_checkpoint`) tries every ``state.json`` candidate (current, ``.prev``, ``.tmp``), finds for
each tensor file a copy whose SHA-256 matches, and returns the verified checkpoint with the highest step. Tensors
are read with safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from icgd.errors import CheckpointError

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.safetensors", "state.json"
SUFFIXES = ("", ".prev", ".tmp")
FORMAT = 1


@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    meta: dict


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(folder: str | Path, *, step: int, model: dict[str, torch.Tensor],
                    state: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a checkpoint atomically (see the module docstring); `meta` must be JSON-serialisable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = {name: folder / (name + ".tmp") for name in (MODEL_FILE, STATE_FILE, META_FILE)}
    save_file(_contiguous(model), str(tmp[MODEL_FILE]))
    save_file(_contiguous(state), str(tmp[STATE_FILE]))
    record = {"format": FORMAT, "step": int(step), "meta": meta,
              "sha256": {MODEL_FILE: sha256(tmp[MODEL_FILE]), STATE_FILE: sha256(tmp[STATE_FILE])}}
    tmp[META_FILE].write_text(json.dumps(record, indent=1, sort_keys=True))
    for path in tmp.values():
        _fsync_file(path)
    names = (MODEL_FILE, STATE_FILE, META_FILE)
    for name in names:  # keep the previous checkpoint until the new one is complete
        if (folder / name).exists():
            os.replace(folder / name, folder / (name + ".prev"))
    for name in names:  # state.json last: it commits the checkpoint
        os.replace(tmp[name], folder / name)
    _fsync_dir(folder)
    for name in names:
        (folder / (name + ".prev")).unlink(missing_ok=True)


def _find_copy(folder: Path, name: str, digest: str) -> Path | None:
    for suffix in SUFFIXES:
        path = folder / (name + suffix)
        if path.exists() and sha256(path) == digest:
            return path
    return None


def _candidates(folder: Path) -> list[tuple[dict, Path, Path]]:
    found = []
    for suffix in SUFFIXES:
        path = folder / (META_FILE + suffix)
        try:
            record = json.loads(path.read_text())
            digests = record["sha256"]
            step = int(record["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        model, state = _find_copy(folder, MODEL_FILE, digests[MODEL_FILE]), _find_copy(folder, STATE_FILE,
                                                                                      digests[STATE_FILE])
        if model is not None and state is not None:
            found.append(({**record, "step": step}, model, state))
    return sorted(found, key=lambda c: -c[0]["step"])


def has_checkpoint(folder: str | Path) -> bool:
    return bool(_candidates(Path(folder)))


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The newest complete, checksum-verified checkpoint in `folder`; :class:`CheckpointError` if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no run folder at {folder}; pass the --out folder of an earlier `icgd train`")
    candidates = _candidates(folder)
    if not candidates:
        raise CheckpointError(f"no complete checkpoint in {folder} (missing files or SHA-256 mismatch in "
                              f"{MODEL_FILE}/{STATE_FILE}/{META_FILE}); start a new run instead of resuming")
    record, model_path, state_path = candidates[0]
    model = load_file(str(model_path), device=str(device))
    state = load_file(str(state_path), device=str(device))
    return Checkpoint(step=record["step"], model=model, state=state, meta=record.get("meta", {}))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state dict split into tensors (for safetensors) and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in rest.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this model: {exc}") from exc
