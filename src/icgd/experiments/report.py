"""Reports of the reproductions: one structured description rendered twice, as markdown and as a self-contained
HTML page (figures embedded), plus the metrics as JSON and CSV.

A report is a pure function of a run's saved ``metrics.json``: the experiment's ``render(report)`` reads
``report.metrics`` / ``report.settings``, and adds text, tables, figures, paper-vs-ours rows and verdicts. That is
what lets ``icgd report DIR`` rebuild a report without rerunning anything.

Scale-aware parts, the same for every experiment: at ``--scale smoke`` the report opens with :data:`SMOKE_LINE` and
the experiment's own account of what the smoke run ran (its module's optional ``smoke_note(report) -> str``; a
generic pointer to the settings otherwise), and every verdict cell reads :data:`NOT_JUDGED` (the evidence column
still shows the numbers). A ``metrics["headline"]`` dict of scalars is listed in a "Headline numbers" section.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from icgd.errors import ConfigError  # noqa: E402

VERDICTS = ("reproduced", "partly", "not")
DATA_DIR = Path(__file__).parent / "data"
NOT_JUDGED = "not judged (smoke)"
SMOKE_LINE = ("**Smoke scale: this run checks that the pipeline runs end to end; it is not a reproduction.** Its "
              "models train for seconds, so no verdict is judged and no number below measures the paper's claims; "
              "see the `cpu`-scale report for results.")


@dataclass(frozen=True)
class PaperValue:
    """One number a paper published, with where it stands in the paper."""

    key: str
    quantity: str
    value: float
    source: str


def paper_values(name: str) -> tuple[str, dict[str, PaperValue]]:
    """(citation, {key: PaperValue}) from ``experiments/data/<name>.json``."""
    path = DATA_DIR / f"{name}.json"
    if not path.exists():
        return "", {}
    raw = json.loads(path.read_text())
    values = {v["key"]: PaperValue(v["key"], v["quantity"], float(v["value"]), v["source"])
              for v in raw.get("values", [])}
    return raw.get("citation", ""), values


def fmt(x: Any, digits: int = 4) -> str:
    """A number as the reports print it (4 significant digits); anything else via str."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


@dataclass
class _Block:
    kind: str  # "heading" | "text" | "table" | "figure"
    data: Any


@dataclass
class Report:
    """What ``render`` fills in. ``metrics``/``settings``/``meta`` come from the run's ``metrics.json``."""

    name: str
    title: str
    metrics: dict
    settings: dict
    meta: dict
    out: Path
    citation: str = ""
    paper: dict[str, PaperValue] = field(default_factory=dict)
    blocks: list[_Block] = field(default_factory=list)
    comparisons: list[tuple[str, str, float, float, str]] = field(default_factory=list)
    claims: list[tuple[str, str, str]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    # -- what render() calls

    def heading(self, text: str) -> None:
        self.blocks.append(_Block("heading", text))

    def text(self, markdown: str) -> None:
        """A paragraph or a bullet list, in the markdown subset the HTML writer knows: **bold**, `code`, '- '."""
        self.blocks.append(_Block("text", markdown.strip()))

    def table(self, header: list[str], rows: list[list[Any]], caption: str = "") -> None:
        self.blocks.append(_Block("table", (header, [[fmt(c) for c in r] for r in rows], caption)))

    def figure(self, fig, name: str, caption: str) -> Path:
        """Save `fig` as ``figures/<name>.png`` and ``.svg`` and place it here in the report."""
        folder = self.out / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        png = folder / f"{name}.png"
        fig.savefig(png, dpi=110)
        fig.savefig(folder / f"{name}.svg")
        plt.close(fig)
        self.figures.append(png)
        self.blocks.append(_Block("figure", (png, caption)))
        return png

    def paper_vs_ours(self, key: str, ours: float, note: str = "") -> None:
        """A row of the "paper vs icgd" table for the published number stored under `key`."""
        if key not in self.paper:
            raise ConfigError(f"{self.name}: no published value {key!r} in experiments/data/{self.name}.json "
                              f"(known: {', '.join(sorted(self.paper)) or 'none'})")
        p = self.paper[key]
        self.comparisons.append((p.quantity, p.source, p.value, float(ours), note))

    def claim(self, claim: str, verdict: str, evidence: str) -> None:
        """A headline claim of the paper with an honest verdict: reproduced / partly / not, and why."""
        if verdict not in VERDICTS:
            raise ConfigError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self.claims.append((claim, verdict, evidence))

    # -- scale-dependent parts (smoke runs are labelled, not judged)

    @property
    def is_smoke(self) -> bool:
        return self.meta.get("scale") == "smoke"

    def verdict_cell(self, verdict: str) -> str:
        return NOT_JUDGED if self.is_smoke else f"**{verdict}**"

    def smoke_note(self) -> str:
        """What a smoke run ran: the experiment module's ``smoke_note(report) -> str`` when it defines one, else a
        pointer to the settings table."""
        try:
            module = importlib.import_module(f"icgd.experiments.{self.name}")
        except ImportError:
            module = None
        note = getattr(module, "smoke_note", None)
        if callable(note):
            return str(note(self)).strip()
        sizes = ", ".join(f"{k} = {fmt(v)}" for k, v in self.settings.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and
                          any(w in k for w in ("step", "layer", "prompt", "embd", "epoch", "points")))
        return ("What this smoke run ran: the sizes in the Settings table at the end" +
                (f" ({sizes})" if sizes else "") + "; where the text below names larger models, prompts or step "
                "counts, those belong to the cpu or paper scale and were not run here.")

    def _headline_rows(self) -> list[list[str]]:
        """``metrics["headline"]`` (scalars) as rows; a key with ``_lo``/``_hi`` siblings becomes one row with its
        interval."""
        h = self.metrics.get("headline")
        if not isinstance(h, dict):
            return []
        rows = []
        for key, value in h.items():
            if key.endswith(("_lo", "_hi")) and key[:-3] in h:
                continue
            if isinstance(value, (list, dict)):
                continue
            cell = fmt(value)
            if f"{key}_lo" in h and f"{key}_hi" in h:
                cell += f" [{fmt(h[key + '_lo'])}, {fmt(h[key + '_hi'])}]"
            rows.append([key, cell])
        return rows

    # -- writers

    def _settings_rows(self) -> list[list[str]]:
        return [[k, fmt(v) if not isinstance(v, (list, dict)) else json.dumps(v)] for k, v in self.settings.items()]

    def _meta_line(self) -> str:
        m = self.meta
        return (f"scale `{m.get('scale')}`, seed {m.get('seed')}, device {m.get('device')}, "
                f"{fmt(m.get('seconds', float('nan')), 3)} s on {m.get('machine', '?')} "
                f"({m.get('threads', '?')} threads), torch {m.get('torch', '?')}, icgd {m.get('icgd', '?')}, "
                f"{m.get('started', '')}")

    def _comparison_rows(self) -> list[list[str]]:
        return [[q, src, fmt(p), fmt(o), fmt(o - p), note] for q, src, p, o, note in self.comparisons]

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.citation:
            lines += [f"*{self.citation}*", ""]
        lines += [f"Run: {self._meta_line()}.", ""]
        if self.is_smoke:
            lines += [SMOKE_LINE, "", self.smoke_note(), ""]
        if self.claims:
            lines += ["## Verdicts", ""]
            lines += _md_table(["claim", "verdict", "evidence"],
                               [[c, self.verdict_cell(v), e] for c, v, e in self.claims])
        if self.comparisons:
            lines += ["## The paper's numbers beside ours", ""]
            lines += _md_table(["quantity", "paper source", "paper", "icgd", "icgd − paper", "note"],
                               self._comparison_rows())
        for b in self.blocks:
            if b.kind == "heading":
                lines += [f"## {b.data}", ""]
            elif b.kind == "text":
                lines += [b.data, ""]
            elif b.kind == "table":
                header, rows, caption = b.data
                if caption:
                    lines += [f"*{caption}*", ""]
                lines += _md_table(header, rows)
            elif b.kind == "figure":
                png, caption = b.data
                lines += [f"![{caption}](figures/{png.name})", "", f"*{caption}* "
                          f"([SVG](figures/{png.stem}.svg))", ""]
        if self._headline_rows():
            lines += ["## Headline numbers", "", "*`metrics.headline` in metrics.json ([low, high]: 95% interval).*",
                      ""] + _md_table(["key", "value"], self._headline_rows())
        lines += ["## Settings", ""] + _md_table(["setting", "value"], self._settings_rows())
        return "\n".join(lines).rstrip() + "\n"

    def html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.citation:
            parts.append(f"<p><em>{html.escape(self.citation)}</em></p>")
        parts.append(f"<p>Run: {_inline(self._meta_line())}.</p>")
        if self.is_smoke:
            parts += [_html_text(SMOKE_LINE), _html_text(self.smoke_note())]
        if self.claims:
            parts += ["<h2>Verdicts</h2>", _html_table(["claim", "verdict", "evidence"],
                                                       [[c, self.verdict_cell(v), e] for c, v, e in self.claims])]
        if self.comparisons:
            parts += ["<h2>The paper's numbers beside ours</h2>",
                      _html_table(["quantity", "paper source", "paper", "icgd", "icgd − paper", "note"],
                                  self._comparison_rows())]
        for b in self.blocks:
            if b.kind == "heading":
                parts.append(f"<h2>{html.escape(b.data)}</h2>")
            elif b.kind == "text":
                parts.append(_html_text(b.data))
            elif b.kind == "table":
                header, rows, caption = b.data
                if caption:
                    parts.append(f"<p><em>{_inline(caption)}</em></p>")
                parts.append(_html_table(header, rows))
            elif b.kind == "figure":
                png, caption = b.data
                data = base64.b64encode(png.read_bytes()).decode()
                parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{_inline(caption)}</figcaption></figure>")
        if self._headline_rows():
            parts += ["<h2>Headline numbers</h2>", _html_table(["key", "value"], self._headline_rows())]
        parts += ["<h2>Settings</h2>", _html_table(["setting", "value"], self._settings_rows())]
        body = "\n".join(parts)
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")

    def write(self) -> list[Path]:
        """Write report.md, report.html and metrics.csv into ``out`` (figures are already there)."""
        md, page, table = self.out / "report.md", self.out / "report.html", self.out / "metrics.csv"
        md.write_text(self.markdown())
        page.write_text(self.html())
        write_metrics_csv(self.metrics, table)
        return [md, page, table, *self.figures]


def write_metrics_csv(metrics: dict, path: Path) -> None:
    """Long format: one row per number, ``key, index, value`` (index empty for scalars)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "index", "value"])
        for key, value in flatten(metrics).items():
            if isinstance(value, list):
                for i, v in enumerate(value):
                    w.writerow([key, i, v])
            else:
                w.writerow([key, "", value])


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists of numbers stay lists, lists of lists are indexed."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and isinstance(v[0], (list, dict)):
            out.update(flatten({str(i): x for i, x in enumerate(v)}, key + "."))
        else:
            out[key] = v
    return out


def _md_cell(x: str) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return lines + [""]


def _inline(text: str) -> str:
    s = html.escape(str(text))
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    return re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", s)


def _html_text(markdown: str) -> str:
    out, items = [], []
    for line in markdown.splitlines() + [""]:
        if line.lstrip().startswith("- "):
            items.append(f"<li>{_inline(line.lstrip()[2:])}</li>")
            continue
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
        "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
        "text-align:left}th{background:#f3f3f3}img{max-width:100%}figure{margin:1rem 0}"
        "figcaption{font-size:.9rem;color:#444}code{background:#f5f5f5;padding:0 .2rem}")
