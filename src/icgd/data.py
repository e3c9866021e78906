"""User data files for the command line, read strictly: ``icgd construct deep --data PATH``.

* **CSV** with one header line; every other line has the same number of comma-separated numbers; the last
  `targets` columns are Y, the others X.
* **NPZ** (``numpy.savez``) with arrays ``X`` ``(n, d_in)`` and ``Y`` ``(n,)`` or ``(n, d_out)``; read with
  ``allow_pickle=False``, after the ``.npy`` headers inside the zip were read on their own: object arrays are
  refused and the *decompressed* size is checked against the memory limit (:func:`icgd.memory.npz_memory`) before
  anything is decompressed. A file that is no zip, or a zip with a corrupt member, is a :class:`DataError` too.

A CSV file is refused before it is read when parsing it would not fit (:func:`icgd.memory.csv_memory`). Anything
else — a missing header, a non-number, a row of the wrong length, NaN or inf, no rows — raises
:class:`~icgd.errors.DataError` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from icgd._checks import positive_float, positive_int
from icgd.errors import DataError


def read_xy(path: str | Path, targets: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``X (n, d_in)`` and ``Y (n, d_out)`` as float64 tensors from a CSV or NPZ file (see the module docstring)."""
    path = Path(path)
    targets = positive_int(targets, "--targets")
    if not path.is_file():
        raise DataError(f"no data file at {path}")
    if path.suffix.lower() == ".npz":
        X, Y = _read_npz(path)
    else:
        X, Y = _read_csv(path, targets)
    return torch.from_numpy(X), torch.from_numpy(Y)


def _read_csv(path: Path, targets: int) -> tuple[np.ndarray, np.ndarray]:
    from icgd.memory import csv_memory

    csv_memory(path, path.stat().st_size).check()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    rows = [(i, r) for i, r in enumerate(rows, start=1) if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DataError(f"{path} needs a header line and at least one row of numbers, got {len(rows)} line(s)")
    header = rows[0][1]
    width = len(header)
    if width < targets + 1:
        raise DataError(f"{path} has {width} column(s) but needs at least {targets + 1}: the inputs, then the last "
                        f"{targets} column(s) as targets (--targets {targets})")
    values = np.empty((len(rows) - 1, width), dtype=np.float64)
    for r, (line, row) in enumerate(rows[1:]):
        if len(row) != width:
            raise DataError(f"{path}, line {line}: {len(row)} column(s), but the header has {width}")
        for c, cell in enumerate(row):
            values[r, c] = _number(cell, path, line, header[c])
    return values[:, :-targets].copy(), values[:, -targets:].copy()


def _number(cell: str, path: Path, line: int, column: str) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise DataError(f"{path}, line {line}, column {column.strip()!r}: {cell.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{path}, line {line}, column {column.strip()!r}: {cell.strip()} is not finite; clean or "
                        f"impute the data first")
    return v


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """``{name: (shape, itemsize)}`` of every array of an ``.npz``, from the ``.npy`` headers alone (a few hundred
    bytes of each member are decompressed, never the data). Object arrays and unreadable zips raise
    :class:`DataError`."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
                if dtype.hasobject:
                    raise DataError(f"{path}: array {name} holds Python objects, which would need unpickling; "
                                    f"icgd loads no pickles: save numbers (np.savez(path, X=X.astype(float), ...))")
                out[name] = (tuple(int(v) for v in shape), int(dtype.itemsize))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise DataError(f"cannot read {path} as .npz (no pickles allowed): {exc}") from None
    return out


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from icgd.memory import npz_memory

    npz_memory(path, npz_headers(path)).check()
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise DataError(f"cannot read {path} as .npz (no pickles allowed): {exc}") from None
    missing = sorted({"X", "Y"} - set(arrays))
    if missing:
        raise DataError(f"{path} must hold arrays X and Y, it lacks {', '.join(missing)} (has: "
                        f"{', '.join(sorted(arrays)) or 'nothing'})")
    X, Y = arrays["X"], arrays["Y"]
    for name, a in (("X", X), ("Y", Y)):
        if a.dtype.kind not in "biuf":
            raise DataError(f"{path}: {name} must hold numbers, got dtype {a.dtype}")
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0] or X.shape[0] < 1 or X.shape[1] < 1 or Y.shape[1] < 1:
        raise DataError(f"{path}: expected X (n, d_in) and Y (n,) or (n, d_out) with n >= 1, got X {X.shape} and "
                        f"Y {Y.shape}")
    for name, a in (("X", X), ("Y", Y)):
        bad = np.argwhere(~np.isfinite(a))
        if bad.size:
            raise DataError(f"{path}: {name}[{', '.join(map(str, bad[0]))}] is {a[tuple(bad[0])]}, not finite; clean "
                            f"or impute the data first")
    return X, Y


@dataclass
class DataRun:
    """Wu et al.'s construction run on a user's data, against autograd GD on the same data and w0."""

    rel_error: list[float]  # ‖w̄_l − w_l‖ / ‖w_L − w_0‖ per step l = 0 … L
    loss_tf: list[float]
    loss_gd: list[float]
    summary: list[dict]
    fit_ranges: list[float]
    pred_error: float  # max |f(w̄_L, x_i) − f(w_L, x_i)| over the data
    seconds_tf: float
    seconds_gd: float

    @property
    def final_error(self) -> float:
        return self.rel_error[-1]


def construct_on_data(X: torch.Tensor, Y: torch.Tensor, *, depth: int, width: int, activation: str, steps: int,
                      eta: float, knots: int, box: float | None, seed: int, device: str = "cpu") -> DataRun:
    """Build :func:`~icgd.constructions.deep_gd` for an N-layer network on ``X (n, d_in) → Y (n, d_out)``, run it
    on the data from a seeded w0, and compare with :func:`~icgd.learners.gd_trajectory`. Fit intervals a priori
    from `box` and max |x|, or without a box from the reference trajectory (25 % margin)."""
    from icgd.constructions import deep_gd, fit_ranges_from_data
    from icgd.learners import empirical_risk, gd_trajectory
    from icgd.memory import deep_run_memory
    from icgd.nets import NetSpec, forward, init_weights

    box = None if box is None else positive_float(box, "box")
    spec = NetSpec(X.shape[-1], width, depth, Y.shape[-1], activation)
    deep_run_memory(spec, knots=positive_int(knots, "knots", minimum=2), box=box, tokens=X.shape[0],
                    steps=positive_int(steps, "steps", minimum=0),
                    what=f"deep_gd(width={width}, depth={depth}, knots={knots}) on {X.shape[0]} points").check(device)
    w0 = init_weights(spec, 1, generator=torch.Generator().manual_seed(seed))
    if box is not None:
        w0 = w0.clamp(-box, box)
    X, Y = X[None], Y[None]
    t0 = time.perf_counter()
    ref = gd_trajectory(spec, X, Y, w0, eta, steps, box=box)
    t_gd = time.perf_counter() - t0
    if box is not None:
        model = deep_gd(spec, eta=eta, steps=steps, box=box, knots=knots, x_bound=max(float(X.abs().max()), 1e-3))
    else:
        model = deep_gd(spec, eta=eta, steps=steps, knots=knots, fit_range=fit_ranges_from_data(spec, X, ref))
    model = model.to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        tr = model.trace(X.to(device), Y.to(device), w0.to(device)).cpu()
    t_tf = time.perf_counter() - t0
    denom = (ref[:, -1] - ref[:, 0]).norm(dim=-1).clamp(min=1e-300)
    rel = ((tr - ref).norm(dim=-1) / denom[:, None])[0]
    L = ref.shape[1]
    risk = lambda W: empirical_risk(spec, W[0], X.expand(L, -1, -1), Y.expand(L, -1, -1))
    pred_error = float((forward(spec, tr[0, -1], X[0]) - forward(spec, ref[0, -1], X[0])).abs().max())
    return DataRun(rel.tolist(), risk(tr).tolist(), risk(ref).tolist(), model.summary(), list(model.fit_ranges),
                   pred_error, t_tf, t_gd)
