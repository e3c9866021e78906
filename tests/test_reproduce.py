"""The reproductions at smoke scale: each writes its report, figures and metrics, and the report's numbers are the
run's (rebuilding the report from altered metrics changes them)."""

from __future__ import annotations

import json

import pytest

from icgd.cli import main
from icgd.errors import ConfigError
from icgd.experiments.report import NOT_JUDGED, SMOKE_LINE, VERDICTS, flatten, paper_values
from icgd.experiments.reproduce import EXPERIMENTS, compare_runs, rebuild_report, run_experiment, settings_for

def _scale_floats(x, factor: float):
    if isinstance(x, dict):
        return {k: _scale_floats(v, factor) for k, v in x.items()}
    if isinstance(x, list):
        return [_scale_floats(v, factor) for v in x]
    if isinstance(x, float):
        return x * factor
    return x


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_writes_a_report_from_its_metrics(name, smoke_run):
    out, _ = smoke_run(name)
    for f in ("report.md", "report.html", "metrics.csv", "metrics.json"):
        assert (out / f).stat().st_size > 0, f
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs and all(p.with_suffix(".svg").exists() for p in pngs)
    record = json.loads((out / "metrics.json").read_text())
    assert record["meta"]["experiment"] == name and record["settings"] == settings_for(name, "smoke")
    numbers = [v for v in flatten(record["metrics"]).values() if isinstance(v, float)]
    assert numbers, "an experiment must return measured numbers"
    md = (out / "report.md").read_text()
    section = md.split("## Verdicts")[1].split("\n## ")[0].strip().splitlines()
    verdicts = [row for row in section[2:] if row.startswith("| ")]  # the table's rows, not the prose after it
    assert verdicts and all(f"| {NOT_JUDGED} |" in row for row in verdicts), "smoke runs are not judged"
    assert not any(f"**{v}**" in row for v in VERDICTS for row in verdicts)
    assert SMOKE_LINE in md and md.index(SMOKE_LINE) < md.index("## Verdicts")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    if name == "mechanism":  # a study, not a paper: no published numbers (its report is tested in test_mechanism)
        return
    # the paper's numbers stand beside ours, and every cited key exists
    citation, paper = paper_values(name)
    assert citation and (bool(paper) == ("The paper's numbers beside ours" in md))  # cheng2024 stores none
    section = "The paper's numbers beside ours" if paper else "## Verdicts"
    # the report is a function of metrics.json: altered metrics give an altered paper-vs-ours table
    altered = out.parent / f"{out.name}-altered"
    altered.mkdir()
    record["metrics"] = _scale_floats(record["metrics"], 1.37)
    (altered / "metrics.json").write_text(json.dumps(record))
    rebuild_report(altered)
    table = md.split(section)[1].split("\n## ")[0]
    table2 = (altered / "report.md").read_text().split(section)[1].split("\n## ")[0]
    assert table != table2
    header, rows = compare_runs(out, altered)
    assert any(r[3] not in ("", "0") for r in rows)


def test_cli_reproduce_list_and_errors(tmp_path, capsys):
    main(["reproduce", "--list"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS)
    for argv in (["reproduce", "nope"], ["reproduce", "garg2022", "--scale", "huge"],
                 ["report", str(tmp_path)], ["reproduce", "garg2022", "--set", "nokey=1"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("icgd: error:"), argv


def test_existing_report_is_not_overwritten(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="--force"):
        run_experiment("garg2022", "smoke", tmp_path)
    assert (tmp_path / "metrics.json").read_text() == "{}"
