"""The command line: the README's main job, the construct command, and one-line errors with exit code 2."""

from __future__ import annotations

import re

import pytest

from icgd.cli import main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code or 0, out.out, out.err


def test_version(capsys):
    code, out, _ = run(["version"], capsys)
    assert code == 0 and out.startswith("icgd ")


def test_demo_matches_autograd_and_saves_the_figure(tmp_path, capsys):
    code, out, err = run(["demo", "--out", str(tmp_path / "demo.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    final = float(re.search(r"final relative weight error vs autograd GD: ([0-9.e+-]+)", out).group(1))
    assert final < 1e-3


def test_construct_prints_errors_and_saves_plots(tmp_path, capsys):
    code, out, err = run(["construct", "--depth", "2", "--width", "3", "--d-in", "2", "--d-out", "2",
                          "--steps", "3", "--n", "12", "--sweep", "32,128", "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    slope = float(re.search(r"log-log slope (-?[0-9.]+)", out).group(1))
    assert -2.6 < slope < -1.5
    assert (tmp_path / "error_vs_step.png").exists() and (tmp_path / "error_vs_knots.png").exists()


@pytest.mark.parametrize("args,needle", [
    (["construct", "--knots", "1", "--sweep", ""], "knots"),
    (["construct", "--activation", "swish", "--sweep", ""], "unknown activation"),
    (["construct", "--depth", "0", "--sweep", ""], "depth"),
    (["construct", "linar"], "unknown construction"),
    (["construct", "functional", "--kernel", "cosine"], "unknown kernel"),
    (["construct", "ridge", "--lam", "-1"], "lam"),
    (["train"], "--preset"),
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "--preset", "lsa-smoke", "--set", "lr"], "key=value"),
    (["construct", "--sweep", "a,b"], "--sweep"),
    (["construct", "--no-such-flag"], "no-such-flag"),
    (["demo", "--knots", "x"], "knots"),
])
def test_bad_input_exits_2_with_one_line(args, needle, capsys):
    code, _, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("args,tol", [
    (["linear"], 1e-12), (["gdpp"], 1e-12), (["ridge"], 1e-10), (["ridge", "--variant", "faithful"], 1e-6),
    (["sgd", "--eta", "0.01"], 1e-12), (["functional", "--kernel", "exp"], 1e-12), (["convex"], 1e-12),
    (["convex", "--loss", "logistic"], 2e-3),
])
def test_construct_linear_kinds_print_error_vs_closed_form(args, tol, capsys):
    code, out, err = run(["construct", *args, "--n", "8"], capsys)
    assert code == 0, err
    rel = float(re.search(r"\(relative ([0-9.e+-]+)\)", out.replace("\n", " ")).group(1))
    assert rel < tol
    assert "layers" in out and "reference:" in out


def test_debug_flag_shows_the_traceback():
    from icgd.errors import ICGDError

    with pytest.raises(ICGDError):
        main(["construct", "nope", "--debug"])
