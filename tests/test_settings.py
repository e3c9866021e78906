"""The one typed-settings loader (icgd.experiments.settings.load / as_scales) on every experiment and on a toy class."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from icgd.errors import ConfigError
from icgd.experiments.reproduce import EXPERIMENTS, settings_for
from icgd.experiments.settings import as_dict, as_scales, load


def _module(name):
    return importlib.import_module(f"icgd.experiments.{name}")


def _field(cls, kind):
    """The first field of `cls` annotated exactly `kind` (int, float …)."""
    import typing

    return next(k for k, t in typing.get_type_hints(cls).items() if t is kind)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_round_trips_and_refuses_a_wrong_key_type_or_missing_key(name):
    m = _module(name)
    assert set(m.SETTINGS) == set(m.SCALES) == {"smoke", "cpu", "paper"}
    assert m.SCALES == as_scales(m.SETTINGS)
    for scale, typed in m.SETTINGS.items():
        raw = json.loads(json.dumps(m.SCALES[scale]))  # what metrics.json holds: lists, not tuples
        assert load(type(typed), raw) == typed
        assert load(type(typed), settings_for(name, scale)) == typed
    cls, raw = type(m.SETTINGS["smoke"]), m.SCALES["smoke"]
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) stpes; valid settings: .*" + _field(cls, int)):
        load(cls, {**raw, "stpes": 3})
    key = _field(cls, int)
    with pytest.raises(ConfigError, match=rf"setting '{key}' must be an int, got 'x'"):
        load(cls, {**raw, key: "x"})
    with pytest.raises(ConfigError, match=rf"setting '{key}' must be an int, got True"):
        load(cls, {**raw, key: True})  # a bool is not an int
    with pytest.raises(ConfigError, match=rf"setting '{key}' must be an int, got 2.5"):
        load(cls, {**raw, key: 2.5})
    fkey = _field(cls, float)
    assert getattr(load(cls, {**raw, fkey: 1}), fkey) == 1  # an int is accepted for a float
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    if required:
        with pytest.raises(ConfigError, match=rf"missing setting\(s\) {required[0]}"):
            load(cls, {k: v for k, v in raw.items() if k != required[0]})
    else:  # every field has a default (mechanism): a key left out takes it
        default = dataclasses.fields(cls)[0]
        assert getattr(load(cls, {k: v for k, v in raw.items() if k != default.name}), default.name) == default.default


def test_a_bad_set_override_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="below n_test"):  # the experiment's own __post_init__ check
        settings_for("wu2025", "smoke", ["n_test=12"])
    with pytest.raises(ConfigError, match=r"missing setting\(s\) shared"):  # a nested settings object
        settings_for("vonoswald2023", "smoke", ['deep=[{"layers": 2}]'])


@dataclasses.dataclass(frozen=True)
class Inner:
    a: int
    b: float = 0.5


@dataclasses.dataclass(frozen=True)
class Toy:
    pairs: tuple[tuple[int, float], ...]
    inner: tuple[Inner, ...]
    anything: tuple
    table: dict
    maybe: int | None = None
    flag: bool = False

    def __post_init__(self):
        if self.flag and not self.pairs:
            raise ConfigError("Toy: flag needs pairs")


def test_nested_lists_become_tuples_and_nested_dataclasses_load():
    raw = {"pairs": [[1, 0.0], [2, 3]], "inner": [{"a": 1}], "anything": [[1, [2]], "x"], "table": {"k": [1]}}
    t = load(Toy, raw)
    assert t == Toy(((1, 0.0), (2, 3)), (Inner(1),), ((1, (2,)), "x"), {"k": [1]})
    assert isinstance(t.anything[0][1], tuple)
    assert load(Toy, json.loads(json.dumps(as_dict(t)))) == t
    assert as_dict(t)["inner"] == [{"a": 1, "b": 0.5}] and as_dict(t)["pairs"] == [[1, 0.0], [2, 3]]
    assert load(Toy, {**raw, "maybe": None}).maybe is None and load(Toy, {**raw, "maybe": 3}).maybe == 3


@pytest.mark.parametrize("change, message", [
    ({"pairs": [[1, "a"]]}, r"Toy: setting 'pairs\[0\]\[1\]' must be a float \(or int\), got 'a'"),
    ({"pairs": [[1]]}, r"setting 'pairs\[0\]' must be a list \[int, float \(or int\)\], got \[1\]"),
    ({"pairs": 3}, r"setting 'pairs' must be a list of list \[int, float \(or int\)\], got 3"),
    ({"inner": [{"a": 1, "c": 2}]}, r"Toy inner\[0\]: unknown setting\(s\) c; valid settings: a, b"),
    ({"inner": [{"b": 1.0}]}, r"Toy inner\[0\]: missing setting\(s\) a"),
    ({"inner": [7]}, r"setting 'inner\[0\]' must be an object \{a, b\}, got 7"),
    ({"table": [1]}, r"setting 'table' must be an object, got \[1\]"),
    ({"maybe": "3"}, r"setting 'maybe' must be an int or null, got '3'"),
    ({"flag": 1}, r"setting 'flag' must be a bool, got 1"),
    ({"flag": True, "pairs": []}, r"Toy: flag needs pairs"),
])
def test_errors_name_the_setting_and_the_expected_type(change, message):
    raw = {"pairs": [[1, 0.0]], "inner": [{"a": 1}], "anything": [], "table": {}, **change}
    with pytest.raises(ConfigError, match=message):
        load(Toy, raw)
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load(Toy, [1, 2])
