from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import pytest

from vpt_ray.config import ConfigError, from_dict, load_config, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float
    steps: int = 10

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    kind: Literal["a", "b"]
    inner: Inner
    sizes: tuple[int, int] = (64, 64)
    tags: list[str] = dataclasses.field(default_factory=list)
    table: dict[str, float] = dataclasses.field(default_factory=dict)
    limit: Optional[int] = None


def test_builds_nested_and_coerces_ints_to_floats():
    cfg = from_dict(Outer, {"name": "x", "kind": "a", "inner": {"lr": 1}, "sizes": [32, 48], "table": {"w": 2}})
    assert cfg.inner == Inner(lr=1.0, steps=10)
    assert isinstance(cfg.inner.lr, float)
    assert cfg.sizes == (32, 48)
    assert cfg.table == {"w": 2.0}
    assert to_dict(cfg)["sizes"] == [32, 48]


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"name": "x", "kind": "c", "inner": {"lr": 1}}, "kind", "not one of"),
        ({"name": "x", "kind": "a", "inner": {"lr": "fast"}}, "inner.lr", "expected a number"),
        ({"name": "x", "kind": "a", "inner": {"lr": 1, "lrr": 2}}, "inner.lrr", "unknown field"),
        ({"name": "x", "kind": "a"}, "inner", "required field is missing"),
        ({"name": "x", "kind": "a", "inner": {"lr": -1}}, "inner", "lr must be positive"),
        ({"name": "x", "kind": "a", "inner": {"lr": 1}, "sizes": [1, 2, 3]}, "sizes", "expected 2 items"),
        ({"name": "x", "kind": "a", "inner": {"lr": 1}, "tags": ["ok", 3]}, "tags[1]", "expected a string"),
        ({"name": "x", "kind": "a", "inner": {"lr": 1, "steps": True}}, "inner.steps", "expected an integer"),
    ],
)
def test_errors_name_the_field(data, field, words):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, where="spec.yaml")
    assert f"spec.yaml: field '{field}'" in str(e.value)
    assert words in str(e.value)


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Outer, bad)
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        load_config(Outer, tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("name: n\nkind: b\ninner: {lr: 0.5}\nlimit: 3\n")
    assert load_config(Outer, good).limit == 3
