"""Every registered construction against its reference learner, driven by icgd.constructions.registry: a new
construction is checked here as soon as it is registered."""

from __future__ import annotations

import pytest

from icgd.cli import main
from icgd.constructions.registry import REGISTRY, check, get
from icgd.errors import SpecError

SMALL = {"batch": 4, "n": 10, "m": 3}
SMALL_NET = {"batch": 3, "n": 8, "m": 2, "d_in": 2, "depth": 2, "width": 3, "d_out": 1, "steps": 2, "eta": 0.5}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_construction_matches_its_reference(name, one_thread):
    res = check(name, **(SMALL_NET if "depth" in get(name).options else SMALL))
    assert res.rel_error <= get(name).tolerance, (name, res.rel_error)
    assert res.summary and res.reference


@pytest.mark.parametrize("name,options", [("ridge", {"variant": "faithful"}), ("convex", {"loss": "logistic"}),
                                          ("functional", {"kernel": "exp"}), ("gdpp", {"gamma": 0.2})])
def test_registered_options_reach_the_builder(name, options, one_thread):
    res = check(name, **SMALL, **options)
    assert all(res.setting[k] == v for k, v in options.items())
    assert res.rel_error <= get(name).tolerance


def test_registry_errors_and_cli(capsys):
    with pytest.raises(SpecError, match="available: linear"):
        get("nope")
    with pytest.raises(SpecError, match="has no option gamma"):
        check("linear", gamma=0.5)
    with pytest.raises(SystemExit) as info:
        main(["construct", "nope"])
    assert info.value.code == 2
    assert "available: " + ", ".join(REGISTRY) in capsys.readouterr().err
