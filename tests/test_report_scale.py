"""The report writer's scale-aware parts, the same for every experiment: a smoke run is labelled as a pipeline check
and not judged; `metrics.headline` is listed with its intervals."""

from __future__ import annotations

import sys
import types

from icgd.experiments.report import NOT_JUDGED, SMOKE_LINE, Report

HEADLINE = {"relu_in_dist_plateau": 0.5, "relu_in_dist_plateau_lo": 0.4, "relu_in_dist_plateau_hi": 0.625,
            "direct_in_dist": 0.875, "steps_run": 30}


def _report(tmp_path, scale: str, name: str = "no_such_experiment") -> Report:
    r = Report(name=name, title="T", metrics={"headline": dict(HEADLINE)}, settings={"steps": 30, "lr": 1e-3},
               meta={"scale": scale}, out=tmp_path)
    r.claim("X holds", "reproduced", "measured 1.23")
    r.claim("Y holds", "not", "measured 4.56")
    return r


def test_smoke_report_opens_with_the_banner_and_judges_nothing(tmp_path):
    r = _report(tmp_path, "smoke")
    md, page = r.markdown(), r.html()
    assert md.index(SMOKE_LINE) < md.index("## Verdicts")
    assert f"| X holds | {NOT_JUDGED} | measured 1.23 |" in md and f"| Y holds | {NOT_JUDGED} | measured 4.56 |" in md
    assert "**reproduced**" not in md and "**not**" not in md
    verdicts = page.split("<h2>Verdicts</h2>")[1].split("</table>")[0]
    assert verdicts.count(NOT_JUDGED) == 2 and "<strong>" not in verdicts
    assert "steps = 30" in md, "without a smoke_note of its own the report names the sizes that ran"


def test_experiment_smoke_note_replaces_the_fallback(tmp_path, monkeypatch):
    module = types.ModuleType("icgd.experiments.fake_exp")
    module.smoke_note = lambda report: f"This smoke run trained one model for {report.settings['steps']} steps."
    monkeypatch.setitem(sys.modules, "icgd.experiments.fake_exp", module)
    md = _report(tmp_path, "smoke", name="fake_exp").markdown()
    assert "This smoke run trained one model for 30 steps." in md and "steps = 30" not in md


def test_cpu_report_keeps_its_verdicts(tmp_path):
    md = _report(tmp_path, "cpu").markdown()
    assert SMOKE_LINE not in md and NOT_JUDGED not in md
    assert "| X holds | **reproduced** | measured 1.23 |" in md and "| Y holds | **not** | measured 4.56 |" in md


def test_headline_numbers_are_listed_with_their_intervals(tmp_path):
    md = _report(tmp_path, "cpu").markdown()
    section = md.split("## Headline numbers")[1].split("\n## ")[0]
    assert "| relu_in_dist_plateau | 0.5 [0.4, 0.625] |" in section
    assert "| direct_in_dist | 0.875 |" in section and "| steps_run | 30 |" in section
    assert "_lo" not in section and "_hi" not in section
    bare = Report(name="x", title="T", metrics={}, settings={}, meta={"scale": "cpu"}, out=tmp_path).markdown()
    assert "Headline numbers" not in bare
