"""The previous run's figures, read back from the RESULTS.md that a new run is about to replace, so that the new
file shows every ratio beside its previous value (sections 1 and 3; section 2 keeps the fixed reference run of
:data:`icgd.bench.construction.PREVIOUS`).

Only the markdown is read (no side file): the tables are found by their header cells, so both the layout before
the *previous* columns existed and the current one parse. A missing file, a section that was not run, or a table
that does not parse gives no previous values ("–" in the new file), never an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE)
_SIZE_HEADING = re.compile(r"^###\s+(\S+)\s")


@dataclass
class ModelFigures:
    """One model's row of a section-1 table; None where the cell was absent or '–'."""

    train_ratio: float | None = None
    eval_ratio: float | None = None
    memory: str | None = None  # the rise as printed, e.g. "331.9 MB"
    memory_ratio: float | None = None


@dataclass
class Previous:
    """Figures of an earlier RESULTS.md: ``training[size label][model label]``, ``learners[(learner, mode)]`` (the
    batched ÷ loop ratio) and the run's date (the ``| date |`` row)."""

    date: str | None = None
    training: dict[str, dict[str, ModelFigures]] = field(default_factory=dict)
    learners: dict[tuple[str, str], float] = field(default_factory=dict)

    def model(self, size: str, label: str) -> ModelFigures | None:
        return self.training.get(size, {}).get(label)


def first_number(cell: str) -> float | None:
    """The leading number of a cell such as ``**1.34×** (1.21–1.65)`` or ``0.45×``; None for '–' or text."""
    m = _NUMBER.search(cell.replace("**", ""))
    return float(m.group()) if m and cell.strip() not in ("", "–", "-") else None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(lines: list[str]) -> list[tuple[int, list[str], list[list[str]]]]:
    """Every markdown table: (line index of its header, header cells, body rows)."""
    out, i = [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s\-:|]+\|\s*$",
                                                                                 lines[i + 1]):
            header, body, j = _cells(lines[i]), [], i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                body.append(_cells(lines[j]))
                j += 1
            out.append((i, header, body))
            i = j
        else:
            i += 1
    return out


def _cell(row: list[str], header: list[str], name: str, offset: int = 0) -> str | None:
    """The cell `offset` columns right of the column headed `name` (first such column)."""
    if name not in header:
        return None
    k = header.index(name) + offset
    return row[k] if k < len(row) else None


def parse(text: str) -> Previous:
    """The figures of a RESULTS.md text (see :class:`Previous`)."""
    prev = Previous()
    lines = text.splitlines()
    for line in lines:
        cells = _cells(line) if line.lstrip().startswith("|") else []
        if len(cells) >= 2 and cells[0] == "date":
            prev.date = cells[1].split()[0] if cells[1].split() else None
            break
    for start, header, body in _tables(lines):
        if header[:1] == ["model"] and "training steps/s" in header:
            size = next((m.group(1) for ln in reversed(lines[:start]) if (m := _SIZE_HEADING.match(ln))), None)
            if size is None:
                continue
            rows = prev.training.setdefault(size, {})
            for row in body:
                mem = _cell(row, header, "training memory")
                rows[row[0]] = ModelFigures(
                    train_ratio=first_number(_cell(row, header, "training steps/s", 1) or ""),
                    eval_ratio=first_number(_cell(row, header, "eval prompts/s", 1) or ""),
                    memory=mem.split(" (")[0] if mem and mem not in ("–", "-") else None,
                    memory_ratio=first_number(_cell(row, header, "training memory", 1) or ""))
        elif header[:2] == ["learner", "mode"] and "ratio" in header:
            for row in body:
                ratio = first_number(_cell(row, header, "ratio") or "")
                if ratio is not None and len(row) > 1:
                    prev.learners[(row[0], row[1])] = ratio
    return prev


def read(path: Path | str) -> Previous | None:
    """The previous figures from the file at `path`, or None when there is none (or it cannot be read)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    prev = parse(text)
    return prev if prev.training or prev.learners else None
