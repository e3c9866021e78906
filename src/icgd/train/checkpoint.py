"""Crash-safe checkpoints: tensors in safetensors, metadata in JSON, never pickle.

A checkpoint of a run folder is three files::

    model.safetensors   the model's parameters and buffers
    state.safetensors   optimizer tensors (and any other tensor state)
    state.json          step, config hash, non-tensor state, the SHA-256 of both tensor files, and a SHA-256
                        over its own content (``checksum``): an edited step counter or config is refused

**Writing** (:func:`save_checkpoint`): each file is written to ``NAME.tmp`` in the same folder, flushed and
fsync'ed; the current files are renamed to ``NAME.prev``; the new ones take their place with ``os.replace``
(atomic on POSIX), ``state.json`` last; the folder is fsync'ed; only then are the ``.prev`` files removed. A crash at
any moment leaves one complete checkpoint, old or new, among the ``NAME``, ``NAME.prev`` and ``NAME.tmp`` files.

**Loading** (:func:`load_checkpoint`) tries every ``state.json`` candidate (current, ``.prev``, ``.tmp``), finds for
each tensor file a copy whose SHA-256 matches, and returns the verified checkpoint with the highest step. A
``state.json`` whose own checksum fails, or that lacks a section, is not a candidate; when none is left the
:class:`CheckpointError` says why. Tensors are read with safetensors only: nothing is unpickled.
:func:`check_tensors` compares loaded tensors with the ones a config builds (names, shapes, dtypes).

**Lock** (:class:`RunLock`): a process that trains in a run folder holds an exclusive ``flock`` on its ``.lock``
file, which names the holder (pid, host, start time); a second process is refused with
:class:`~icgd.errors.RunLockedError` naming it. The kernel drops the lock when the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from icgd.errors import CheckpointError, RunLockedError

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.safetensors", "state.json"
SUFFIXES = ("", ".prev", ".tmp")
FORMAT = 2  # 2: state.json carries a checksum over itself
LOCK_FILE = ".lock"


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
    record["checksum"] = record_checksum(record)
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


def record_checksum(record: dict) -> str:
    """SHA-256 of a state.json record without its ``checksum`` key (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_record(path: Path) -> dict:
    """A state.json record, verified: its checksum and the sections every checkpoint has; ValueError says why."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "checksum" not in record:
        raise ValueError("no checksum over state.json (written by an older icgd, or by hand)")
    if record["checksum"] != record_checksum(record):
        raise ValueError("its checksum does not match its content (the file was edited or is corrupt)")
    digests, step = record.get("sha256"), record.get("step")
    if not isinstance(digests, dict) or not all(isinstance(digests.get(n), str) for n in (MODEL_FILE, STATE_FILE)):
        raise ValueError("the sha256 section is missing or incomplete")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if not isinstance(record.get("meta"), dict):
        raise ValueError("the meta section is missing")
    return record


def _candidates(folder: Path, reasons: list[str] | None = None) -> list[tuple[dict, Path, Path]]:
    found = []
    for suffix in SUFFIXES:
        path = folder / (META_FILE + suffix)
        if not path.exists():
            continue
        try:
            record = _read_record(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            if reasons is not None and suffix != ".tmp":  # a torn .tmp is the normal trace of a crash mid-save
                reasons.append(f"{path.name}: {exc}")
            continue
        digests = record["sha256"]
        model, state = _find_copy(folder, MODEL_FILE, digests[MODEL_FILE]), _find_copy(folder, STATE_FILE,
                                                                                      digests[STATE_FILE])
        if model is not None and state is not None:
            found.append((record, model, state))
    return sorted(found, key=lambda c: -c[0]["step"])


def has_checkpoint(folder: str | Path) -> bool:
    return bool(_candidates(Path(folder)))


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The newest complete, checksum-verified checkpoint in `folder`; :class:`CheckpointError` if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no run folder at {folder}; pass the --out folder of an earlier `icgd train`")
    reasons: list[str] = []
    candidates = _candidates(folder, reasons)
    if not candidates:
        why = f"; {'; '.join(reasons)}" if reasons else ""
        raise CheckpointError(f"no complete checkpoint in {folder} (missing files or SHA-256 mismatch in "
                              f"{MODEL_FILE}/{STATE_FILE}/{META_FILE}{why}); start a new run instead of resuming")
    record, model_path, state_path = candidates[0]
    try:
        model = load_file(str(model_path), device=str(device))
        state = load_file(str(state_path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types on a malformed header
        raise CheckpointError(f"cannot read the tensors of the checkpoint in {folder}: {exc}") from exc
    return Checkpoint(step=record["step"], model=model, state=state, meta=record["meta"])


def check_tensors(expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`CheckpointError` unless `loaded` has exactly the names of `expected`, each with the same shape
    and dtype (nothing is cast or broadcast silently); the message lists the first differences."""
    missing = sorted(set(expected) - set(loaded))
    extra = sorted(set(loaded) - set(expected))
    diffs = [f"missing {', '.join(missing[:5])}"] if missing else []
    diffs += [f"unexpected {', '.join(extra[:5])}"] if extra else []
    for name in sorted(set(expected) & set(loaded)):
        e, got = expected[name], loaded[name]
        if tuple(e.shape) != tuple(got.shape):
            diffs.append(f"{name} has shape {tuple(got.shape)}, the config needs {tuple(e.shape)}")
        elif e.dtype != got.dtype:
            diffs.append(f"{name} is {str(got.dtype).removeprefix('torch.')}, the config needs "
                         f"{str(e.dtype).removeprefix('torch.')}")
    if diffs:
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise CheckpointError(f"{where} does not match the model its config builds: {'; '.join(diffs[:4])}{more}; "
                              f"undo the config edit (a changed shape or dtype cannot be resumed, not even with "
                              f"--force) or start a new run")


class RunLock:
    """An exclusive lock on a run folder (see the module docstring); a context manager. Where ``fcntl`` is missing
    (Windows) it does nothing."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"run folder {self.path.parent} is in use by {holder}; wait for it to finish or "
                                 f"stop it, then try again") from None
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock; the file stays (see the docstring)
            self._fd = None


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
