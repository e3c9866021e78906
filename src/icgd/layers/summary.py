"""The layer table that :meth:`icgd.layers.Transformer.summary` returns: a list of row dicts that prints as a table.

A constructed transformer repeats one block of layers per GD step (or per context point), so the table shows a
repeated block once, with the positions it occupies, unless ``full=True``. ``str()`` gives plain text, rich renders
it as a rich table, and in a notebook or at the prompt its ``repr`` is the plain table.
"""

from __future__ import annotations

import re
from typing import NamedTuple

COLUMNS = ("layers", "role", "kind", "heads/width", "D", "params")  # params: nonzero parameters
_RIGHT = {"layers", "heads/width", "D", "params"}
SHOW_ALL = 12  # tables of up to this many layers are never grouped


class Repeat(NamedTuple):
    """Rows ``start … start + period − 1`` repeat ``count`` times in a row."""

    start: int
    period: int
    count: int


def _key(row: dict) -> tuple:
    role = re.sub(r"\d+", "#", str(row.get("role", "")))
    return role, row.get("kind"), row.get("heads"), row.get("width"), row.get("params")


def find_repeat(rows: list[dict]) -> Repeat | None:
    """The block that covers the most rows by consecutive repetition (at least twice); ties go to the shorter
    block, then the earlier start. Rows match when kind, heads, width, parameter count and role (numbers aside)
    agree."""
    keys = [_key(r) for r in rows]
    n, best = len(keys), None
    for start in range(n):
        for period in range(1, (n - start) // 2 + 1):
            if keys[start] != keys[start + period]:  # cheap rejection before comparing whole blocks
                continue
            block, count = keys[start:start + period], 1
            while keys[start + count * period:start + (count + 1) * period] == block:
                count += 1
            if count > 1 and (best is None or count * period > best.count * best.period):
                best = Repeat(start, period, count)
    return best


def _size(row: dict) -> str:
    size = row.get("heads") if row.get("heads") is not None else row.get("width")
    return "" if size is None else str(size)


def _cells(row: dict, layers: str, role: str) -> list[str]:
    dim = row.get("dim")
    return [layers, role, str(row.get("kind", "")), _size(row), "" if dim is None else str(dim),
            f"{row.get('params', 0):,}"]


def _span(first: str, last: str) -> str:
    """``GD step 1 … 3``: the first role and what differs in the last (after their common words)."""
    if first == last:
        return first
    common = 0
    for i, (a, b) in enumerate(zip(first, last)):
        if a != b:
            break
        if a == " ":
            common = i + 1
    return f"{first} … {last[common:]}"


def _positions(first: int, period: int, count: int) -> str:
    last = first + (count - 1) * period
    if period == 1:
        return f"{first}–{last}"
    if count <= 3:
        return ", ".join(str(first + k * period) for k in range(count))
    return f"{first}, {first + period}, …, {last}"


class LayerTable(list):
    """One dict per layer (``index``, ``kind``, ``heads``, ``width``, ``dim``, ``params`` and, for constructions,
    ``role``), printable as a table. ``rows(full=False)`` gives the cells; ``str()``, ``repr()`` and rich show it."""

    def __init__(self, rows=(), title: str | None = None):
        super().__init__(rows)
        self.title = title

    def repeat(self) -> Repeat | None:
        return find_repeat(self)

    def rows(self, full: bool = False) -> tuple[list[list[str]], str]:
        """(cells of every displayed row, a note saying what a grouped block stands for)."""
        rep = None if full or len(self) <= SHOW_ALL else self.repeat()
        if rep is None:
            return [_cells(r, str(r.get("index", i)), str(r.get("role", ""))) for i, r in enumerate(self)], ""
        end = rep.start + rep.period * rep.count
        out = [_cells(r, str(r.get("index", i)), str(r.get("role", ""))) for i, r in enumerate(self[:rep.start])]
        for j in range(rep.period):
            first, last = self[rep.start + j], self[rep.start + (rep.count - 1) * rep.period + j]
            role = _span(str(first.get("role", "")), str(last.get("role", "")))
            out.append(_cells(first, _positions(rep.start + j, rep.period, rep.count), role))
        out += [_cells(r, str(r.get("index", end + i)), str(r.get("role", ""))) for i, r in enumerate(self[end:])]
        note = (f"{len(self)} layers; the block of {rep.period} layer{'s' if rep.period > 1 else ''} from layer "
                f"{rep.start} repeats {rep.count} times and is shown once")
        return out, note

    def to_text(self, full: bool = False) -> str:
        """A plain-text table (columns aligned, numbers right-justified)."""
        cells, note = self.rows(full)
        widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]

        def line(values) -> str:
            return "  ".join(v.rjust(w) if c in _RIGHT else v.ljust(w)
                             for v, w, c in zip(values, widths, COLUMNS)).rstrip()

        head = [self.title] if self.title else []
        body = [line(COLUMNS), line("-" * w for w in widths), *(line(r) for r in cells)]
        return "\n".join([*head, *body, *([note] if note else [])])

    def to_rich(self, full: bool = False, title: str | None = None):
        """A rich ``Table`` of the same cells (rich is imported here, on use)."""
        from rich.table import Table

        cells, note = self.rows(full)
        from rich import box

        table = Table(title=title or self.title, caption=note or None, box=box.SIMPLE_HEAD, pad_edge=False)
        for col in COLUMNS:
            table.add_column(col, justify="right" if col in _RIGHT else "left", no_wrap=col != "role")
        for row in cells:
            table.add_row(*row)
        return table

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return self.to_text()

    def __rich__(self):
        return self.to_rich()
