from __future__ import annotations

import pytest

from errwise.config import RunConfig, from_dict, load_yaml, parse_value, to_dict
from errwise.errors import ErrwiseError


def test_roundtrip_and_defaults():
    cfg = RunConfig()
    assert from_dict(to_dict(cfg)) == cfg
    assert cfg.data.dataset == "builtin" and cfg.method.memory_per_relation == 10


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ErrwiseError, match="unknown key"):
        from_dict({"train": {"learning_rate": 1}}, source="x.yaml")
    with pytest.raises(ErrwiseError, match="unknown section"):
        from_dict({"trainer": {}}, source="x.yaml")
    with pytest.raises(ErrwiseError, match="train.batch_size"):
        from_dict({"train": {"batch_size": 0}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ErrwiseError, match="bad.yaml"):
        load_yaml(bad)
    with pytest.raises(ErrwiseError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_cli_values_follow_declared_types():
    assert parse_value("train.lr", "1e-4") == 1e-4
    assert parse_value("data.num_tasks", "null") is None
    assert parse_value("data.num_tasks", "3") == 3
    assert parse_value("model.lora", "false") is False
    assert parse_value("model.lora_targets", "q_proj,v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ErrwiseError, match="expects float"):
        parse_value("train.lr", "fast")
    with pytest.raises(ErrwiseError, match="unknown option"):
        parse_value("train.nope", "1")


@pytest.mark.parametrize("preset", ["fewrel", "tacred", "cpu_mini"])
def test_presets_load(preset):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"
    cfg = from_dict(load_yaml(path), source=str(path))
    assert cfg.data.dataset in ("fewrel", "tacred")
