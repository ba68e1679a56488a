from __future__ import annotations

import json

import pytest
import yaml

from errwise.config import MethodConfig, RunConfig, from_dict, load_yaml, parse_value, to_dict
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
    with pytest.raises(ErrwiseError, match="eval.search must be exact or first_token"):
        from_dict({"eval": {"search": "beam"}})
    with pytest.raises(ErrwiseError, match="eval.calibrate must be none or content_free"):
        from_dict({"eval": {"calibrate": "platt"}})
    with pytest.raises(ErrwiseError, match="needs eval.score sum and eval.search exact"):
        from_dict({"eval": {"calibrate": "content_free", "search": "first_token"}})
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
    with pytest.raises(ErrwiseError, match="--train.lr expects a finite number"):
        parse_value("train.lr", "fast")
    with pytest.raises(ErrwiseError, match="unknown option"):
        parse_value("train.nope", "1")


@pytest.mark.parametrize("preset", ["fewrel", "tacred", "cpu_mini", "cpu_mini_fit", "cpu_forget"])
def test_presets_load(preset):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"
    cfg = from_dict(load_yaml(path), source=str(path))
    assert cfg.data.dataset in ("fewrel", "tacred")


def test_cpu_mini_fit_is_cpu_mini_with_the_documented_overrides():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    fit = from_dict(load_yaml(configs / "cpu_mini_fit.yaml"))
    mini = load_yaml(configs / "cpu_mini.yaml")
    mini["train"].update(lr=1e-3, epochs=3.2, consolidate=0.25, budget="replay")
    assert fit == from_dict(mini)


def test_a_run_saved_before_error_upsample_existed_reads_as_upsampling(tmp_path):
    """error_upsample's default is False, but errwise repeated few error-focused examples before the key
    existed: a saved run config without the key must say what the run did (reports group runs by config)."""
    from errwise.config import load_saved_config, save_yaml

    save_yaml(RunConfig(method=MethodConfig(name="errwise")), tmp_path / "config.yaml")
    assert load_saved_config(tmp_path / "config.yaml").errwise.error_upsample is False
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["errwise"]["error_upsample"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_saved_config(tmp_path / "config.yaml").errwise.error_upsample is True
    saved["method"]["name"] = "replay"  # the key never changed what replay did: it groups with new replay runs
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_saved_config(tmp_path / "config.yaml").errwise.error_upsample is False
    (tmp_path / "user.yaml").write_text("method:\n  name: errwise\n")  # a user's config: the default
    assert load_yaml(tmp_path / "user.yaml")["method"] == {"name": "errwise"}
    assert from_dict(load_yaml(tmp_path / "user.yaml")).errwise.error_upsample is False


def test_a_run_saved_with_errwise_options_under_method_loads_as_the_same_config(tmp_path):
    """Runs saved before errwise's options had their own section hold them under `method:`: they load into
    `errwise:` with the same values, so old and new run folders of the same settings group together."""
    from errwise.config import ErrwiseConfig, load_saved_config, save_yaml
    from errwise.report import group_runs, load_run

    cfg = RunConfig(
        method=MethodConfig(name="errwise", memory_per_relation=5),
        errwise=ErrwiseConfig(error_scope="learned", probe_per_relation=1, error_upsample=True),
    )
    save_yaml(cfg, tmp_path / "config.yaml")
    d = yaml.safe_load((tmp_path / "config.yaml").read_text())
    old = {k: v for k, v in d.items() if k != "errwise"}
    old["method"] = {**d["method"], **d["errwise"]}  # the layout of an older run's config.yaml
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert load_saved_config(tmp_path / "old.yaml") == load_saved_config(tmp_path / "config.yaml") == cfg
    del old["method"]["error_upsample"]  # older still: before error_upsample existed, errwise upsampled
    (tmp_path / "older.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert load_saved_config(tmp_path / "older.yaml") == cfg
    # A fresh preset with a moved key: a one-line error naming it, not a silent change.
    with pytest.raises(ErrwiseError, match=r"method.error_scope.*section `errwise:`"):
        from_dict(yaml.safe_load((tmp_path / "old.yaml").read_text()), source="old.yaml")
    with pytest.raises(ErrwiseError, match=r"--errwise.error_scope"):
        parse_value("method.error_scope", "learned")

    runs = []
    for name, layout in (("new", d), ("old", old)):
        path = tmp_path / name
        (path / "predictions").mkdir(parents=True)
        (path / "config.yaml").write_text(yaml.safe_dump({**layout, "output_dir": str(path)}))
        (path / "relations.json").write_text(json.dumps({"P1": {"name": "a", "description": ""}}))
        (path / "accuracy_matrix.json").write_text(json.dumps({"tasks": [["P1"]], "matrix": [[1.0]]}))
        line = {"task": 0, "relations": ["P1"], "seen_accuracy": 1.0, "accuracy_row": [1.0], "seconds": 1.0}
        (path / "metrics.jsonl").write_text(json.dumps(line) + "\n")
        runs.append(load_run(path))
    assert list(group_runs(runs)) == ["errwise"] and len(group_runs(runs)["errwise"]) == 2


def test_the_schedule_defaults_to_the_methods_and_a_given_value_wins(tmp_path):
    """errwise (and the methods built on it) default to the memory deferred to a consolidation round of a quarter
    of the steps, the schedule it was measured best with; replay, joint and finetune to none. A value given wins;
    a run saved before the keys existed had no consolidation round, whatever its method."""
    from errwise.config import TrainConfig, load_saved_config, save_yaml

    def train(method, **kw):
        t = RunConfig(method=MethodConfig(name=method), train=TrainConfig(**kw)).train
        return t.consolidate, t.defer_memory

    assert train("errwise") == train("instructor") == train("lessons") == (0.25, True)
    assert train("replay") == train("joint") == train("finetune") == (0.0, False)
    assert train("errwise", consolidate=0.0) == (0.0, False)  # the paper's schedule
    assert train("errwise", defer_memory=False) == (0.25, False)
    assert train("replay", consolidate=0.25, defer_memory=True) == (0.25, True)
    with pytest.raises(ErrwiseError, match="defer_memory needs train.consolidate > 0"):
        train("replay", defer_memory=True)
    save_yaml(RunConfig(method=MethodConfig(name="errwise")), tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (saved["train"]["consolidate"], saved["train"]["defer_memory"]) == (0.25, True)  # saved resolved
    del saved["train"]["consolidate"], saved["train"]["defer_memory"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved))
    old = load_saved_config(tmp_path / "old.yaml").train
    assert (old.consolidate, old.defer_memory) == (0.0, False)


def test_presets_merge_left_to_right_section_by_section():
    """`errwise run A.yaml B.yaml`: B's keys win, key by key within a section; the paper preset on a stream preset
    gives errwise as the paper describes it on that stream."""
    from pathlib import Path

    from errwise.config import merge_sections

    configs = Path(__file__).resolve().parents[1] / "configs"
    d: dict = {}
    for name in ("cpu_forget", "errwise_paper"):
        merge_sections(d, load_yaml(configs / f"{name}.yaml"))
    cfg = from_dict(d)
    forget = from_dict(load_yaml(configs / "cpu_forget.yaml"))
    assert cfg.data == forget.data and cfg.model == forget.model and cfg.train.lr == forget.train.lr
    assert cfg.method.name == "errwise" and cfg.method.memory_per_relation == forget.method.memory_per_relation
    assert cfg.errwise.error_fraction is None and (cfg.train.consolidate, cfg.train.defer_memory) == (0.0, False)
    default = from_dict({**load_yaml(configs / "cpu_forget.yaml"), "method": {"name": "errwise"}})
    assert (default.train.consolidate, default.train.defer_memory) == (0.25, True)


def test_a_run_folder_and_a_preset_together_are_a_one_line_error(tmp_path, capsys):
    from errwise.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "a.yaml").write_text("method:\n  name: replay\n")
    assert main(["run", str(tmp_path / "run"), str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass one run folder to resume, or YAML presets only" in err and "\n" not in err


def test_methods_lists_each_method_with_its_description_and_default_schedule(capsys):
    from errwise.cli import main
    from errwise.methods import METHODS

    main(["methods"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)
    by_name = {line.split()[0]: line for line in lines}
    assert "Experience replay" in by_name["replay"] and "consolidation round" not in by_name["replay"]
    assert "consolidation round of 0.25" in by_name["errwise"]


def test_a_run_saved_when_instructor_verify_was_a_switch_loads(tmp_path):
    from errwise.config import load_saved_config, save_yaml

    save_yaml(RunConfig(method=MethodConfig(name="lessons")), tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for old, new in ((False, "none"), (True, "choice")):
        saved["instructor"]["verify"] = old
        (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved))
        assert load_saved_config(tmp_path / "old.yaml").instructor.verify == new
