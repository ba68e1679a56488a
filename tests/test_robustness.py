"""A corpus of malformed inputs, as a new user makes them: every data format, the config (YAML and command line),
the CLI and damaged run folders. Each is one line on stderr (`error: ...`, exit status 2, no traceback) and leaves
everything as it was, or is recovered from. All but the recoveries fail before a model is loaded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import shutil
from pathlib import Path

import pytest

from errwise.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# ------------------------------------------------------------------------------------------- the contract


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root and its bytes: what "nothing written" compares."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def one_line_error(argv: list[str], capsys, loaded: bool = False) -> str:
    """`errwise ARGV` fails with exactly one stderr line `error: ...` and exit status 2; returns the line.
    `loaded`: the failure comes after the model was loaded, whose progress bar (transformers') precedes it."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    if loaded:
        lines = [line for line in lines if line.strip() and not line.startswith("Loading weights")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def fails_cleanly(tmp_path: Path, argv: list[str], capsys, *expected: str) -> str:
    before = snapshot(tmp_path)
    line = one_line_error(argv, capsys)
    for words in expected:
        assert words in line, line
    assert snapshot(tmp_path) == before  # nothing written: no run folder, no file touched
    return line


# ------------------------------------------------------------------------------------------- data files

FEWREL_REC = {"tokens": ["a", "b", "c"], "h": ["a", "", [[0]]], "t": ["c", "", [[2]]]}
TACRED_REC = {
    "id": "x1", "relation": "per:title", "token": ["a", "b", "c"],
    "subj_start": 0, "subj_end": 0, "obj_start": 2, "obj_end": 2,
}  # fmt: skip
MARKER_REC = {"relation": "P26", "tokens": ["[E11]", "a", "[E12]", "b", "[E21]", "c", "[E22]"]}
TEXT_REC = {"text": "Marie Curie was born in Warsaw .", "head": "Marie Curie", "tail": "Warsaw", "relation": "r"}
TOKEN_REC = {"tokens": ["Kessa", "is", "in", "Norvasa"], "head": [0, 1], "tail": [3, 4], "relation": "r"}
RANDOM = bytes(range(256))[::-1] * 3  # starts with 0xff: never UTF-8


def jsonl(*records) -> bytes:
    return "".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records).encode()


def fewrel(*extra) -> bytes:
    return json.dumps({"P26": [FEWREL_REC, *extra]}).encode()


def tacred(*extra) -> bytes:
    return json.dumps([TACRED_REC, *extra]).encode()


def marker(*extra) -> bytes:
    return json.dumps({"P26": [MARKER_REC, *extra]}).encode()


# case: (file name, bytes, words the error line must hold). Run as `errwise run --data.dataset FILE`.
DATA = {
    "jsonl random bytes": ("d.jsonl", RANDOM, "d.jsonl: line 1, byte 0: not UTF-8 text"),
    "jsonl latin-1 on line 2": (
        "d.jsonl",
        jsonl(TEXT_REC) + '{"text": "Café"}\n'.encode("latin-1"),
        "d.jsonl: line 2, byte 116: not UTF-8",
    ),
    "jsonl relation null": ("d.jsonl", jsonl(TEXT_REC, {**TEXT_REC, "relation": None}), 'line 2: "relation" must'),
    "jsonl relation number": ("d.jsonl", jsonl({**TEXT_REC, "relation": 5}), 'line 1: "relation" must be a non'),
    "jsonl relation empty": ("d.jsonl", jsonl({**TEXT_REC, "relation": " "}), 'line 1: "relation" must'),
    "jsonl id null": ("d.jsonl", jsonl({**TEXT_REC, "id": None}), 'line 1: "id" must be a non-empty string'),
    "jsonl head is tail (text)": (
        "d.jsonl",
        jsonl({**TEXT_REC, "tail": "Marie Curie"}),
        "line 1: head and tail are the same span [0, 2]",
    ),
    "jsonl head is tail (spans)": ("d.jsonl", jsonl({**TOKEN_REC, "tail": [0, 1]}), "head and tail are the same"),
    "jsonl boolean offsets": ("d.jsonl", jsonl({**TOKEN_REC, "head": [False, True]}), "line 1: head span"),
    "jsonl float offsets": ("d.jsonl", jsonl({**TOKEN_REC, "head": [0.0, 1.0]}), "line 1: head span"),
    "jsonl text a number": ("d.jsonl", jsonl({**TEXT_REC, "text": 5}), 'line 1: "text" must be a non-empty string'),
    "jsonl blank token": ("d.jsonl", jsonl({**TOKEN_REC, "tokens": ["Kessa", " ", "in", "Norvasa"]}), "non-blank"),
    "jsonl line is a list": ("d.jsonl", jsonl([1, 2]), "line 1: expected an object, got list"),
    "jsonl torn last line": ("d.jsonl", jsonl(TEXT_REC, '{"text": "Ada'), "line 2: malformed JSON"),
    "jsonl nested too deeply": ("d.jsonl", ("[" * 100_000).encode(), "line 1: JSON nested too deeply"),
    "jsonl only blank lines": ("d.jsonl", b"\n \n\t\n", "whole file: no instances"),
    "fewrel random bytes": ("f.json", RANDOM, "f.json: line 1, byte 0: not UTF-8"),
    "fewrel head is tail": ("f.json", fewrel({**FEWREL_REC, "t": ["a", "", [[0]]]}), "record 1: head and tail"),
    "fewrel boolean position": ("f.json", fewrel({**FEWREL_REC, "t": ["c", "", [[True]]]}), "record 1: tail (t) is"),
    "fewrel tokens a string": ("f.json", fewrel({**FEWREL_REC, "tokens": "a b c"}), "record 1: tokens must be"),
    "fewrel record a string": ("f.json", fewrel("a b c"), "record 1: expected an object, got str"),
    "fewrel truncated": ("f.json", fewrel()[:-7], "f.json: line 1, column"),
    "tacred relation null": ("t.json", tacred({**TACRED_REC, "relation": None}), 'record 1: "relation" must'),
    "tacred id null": ("t.json", tacred({**TACRED_REC, "id": None}), 'record 1: "id" must be'),
    "tacred subject is object": ("t.json", tacred({**TACRED_REC, "obj_start": 0, "obj_end": 0}), "same span [0, 1]"),
    "tacred offsets as strings": ("t.json", tacred({**TACRED_REC, "subj_start": "0"}), "subject span ['0', 1)"),
    "tacred latin-1": ("t.json", tacred({**TACRED_REC, "token": ["Café"]}).replace(b"\\u00e9", b"\xe9"), "not UTF-8"),
    "marker relation number": ("m.json", marker({**MARKER_REC, "relation": 5}), 'record 1: "relation" must be'),
    "marker head is tail": (
        "m.json",
        marker({"tokens": ["[E11]", "[E21]", "a", "[E12]", "[E22]", "b"]}),
        "record 1: head and tail are the same span",
    ),
    "marker twice": ("m.json", marker({"tokens": [*MARKER_REC["tokens"], "[E11]"]}), "marker [E11] appears twice"),
    "marker tokens not strings": ("m.json", marker({"tokens": ["[E11]", 1, "[E12]"]}), "record 1: tokens must be"),
    "unknown format": ("x.json", b'{"rows": []}', "x.json: unknown data format"),
    "empty json file": ("x.json", b"", "x.json: line 1, column 1: malformed JSON"),
}


@pytest.mark.parametrize("case", list(DATA))
def test_a_malformed_data_file_is_one_line(tmp_path, capsys, case):
    name, content, expected = DATA[case]
    (tmp_path / name).write_bytes(content)
    argv = ["run", "--data.dataset", str(tmp_path / name), "--output_dir", str(tmp_path / "out")]
    fails_cleanly(tmp_path, argv, capsys, expected)


# case: (relations file bytes, words). Run with the fixture's JSONL and `--data.path RELATIONS`.
RELATIONS = {
    "relations random bytes": (RANDOM, "rels.json: line 1, byte 0: not UTF-8"),
    "relations empty name": (b'{"founded_by": {"name": ""}}', "relation founded_by: unreadable entry"),
    "relations a list": (b'["founded_by"]', "rels.json: top level: expected an object"),
}


@pytest.mark.parametrize("case", list(RELATIONS))
def test_a_malformed_relations_file_is_one_line(tmp_path, capsys, case):
    content, expected = RELATIONS[case]
    shutil.copy(FIXTURES / "user_small.jsonl", tmp_path / "u.jsonl")
    (tmp_path / "rels.json").write_bytes(content)
    argv = ["run", "--data.dataset", str(tmp_path / "u.jsonl"), "--data.path", str(tmp_path / "rels.json")]
    fails_cleanly(tmp_path, [*argv, "--output_dir", str(tmp_path / "out")], capsys, expected)


def test_dataset_folders_with_damaged_files(tmp_path, capsys):
    (tmp_path / "fewrel").mkdir()
    (tmp_path / "fewrel" / "fewrel80.json").write_bytes(RANDOM)
    (tmp_path / "fewrel" / "pid2name.json").write_text("{}")
    argv = ["run", "--data.dataset", "fewrel", "--data.path", str(tmp_path / "fewrel")]
    fails_cleanly(tmp_path, [*argv, "--output_dir", str(tmp_path / "o")], capsys, "fewrel80.json: line 1, byte 0")
    (tmp_path / "tacred").mkdir()
    (tmp_path / "tacred" / "train.json").write_bytes(tacred({**TACRED_REC, "relation": 7}))
    argv = ["run", "--data.dataset", "tacred", "--data.path", str(tmp_path / "tacred")]
    fails_cleanly(tmp_path, [*argv, "--output_dir", str(tmp_path / "o")], capsys, 'train.json: record 1: "relation"')


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    from errwise.data.formats import load_corpus

    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl(TEXT_REC))
    assert load_corpus(str(tmp_path / "d.jsonl")).instances[0].head_text == "Marie Curie"


# ------------------------------------------------------------------------------------------- config

# case: (YAML text or bytes, words). Run as `errwise run CONFIG.yaml`.
YAML = {
    "lr a word": ("train: {lr: fast}\n", "c.yaml: train.lr expects a finite number, got 'fast'"),
    "lr nan": ("train: {lr: .nan}\n", "train.lr expects a finite number"),
    "batch size fractional": ("train: {batch_size: 8.5}\n", "train.batch_size expects an integer, got 8.5"),
    "batch size quoted": ("train: {batch_size: '8'}\n", "train.batch_size expects an integer, got '8'"),
    "lora a word": ("model: {lora: maybe}\n", "model.lora expects true or false"),
    "targets a string": ("model: {lora_targets: q_proj}\n", "model.lora_targets expects a list of strings"),
    "num_tasks a list": ("data: {num_tasks: [1]}\n", "data.num_tasks expects an integer or null"),
    "eval batch size 0": ("eval: {batch_size: 0}\n", "eval.batch_size must be > 0, got 0"),
    "max_test 0": ("data: {max_test: 0}\n", "data.max_test must be > 0"),
    "test_size 0": ("data: {test_size: 0}\n", "data.test_size must be > 0"),
    "warmup above 1": ("train: {warmup_ratio: 1.5}\n", "train.warmup_ratio must be in [0, 1)"),
    "dropout 1": ("model: {lora_dropout: 1}\n", "model.lora_dropout must be in [0, 1)"),
    "negative seed": ("train: {seed: -1}\n", "train.seed must be >= 0"),
    "section a number": ("train: 5\n", "c.yaml: section 'train' must be a mapping"),
    "output_dir a number": ("output_dir: 5\n", "output_dir expects a string or null"),
    "top level a list": ("- train\n", "c.yaml: expected a mapping of sections"),
    "unknown section": ("trainer: {lr: 1}\n", "c.yaml: unknown section 'trainer'"),
    "unknown key": ("train: {learning_rate: 1}\n", "unknown key(s) ['learning_rate'] in section 'train'"),
    "malformed": ("train: {lr: 1\n", "c.yaml: line 2, column 1: malformed YAML"),
    "tab indented": ("train:\n\tlr: 1\n", "c.yaml: line 2, column 1: malformed YAML"),
    "python tag": ("train: !!python/object:os.system {}\n", "malformed YAML"),
    "not UTF-8": (b"train: {lr: 0.1}\n# caf\xe9\n", "c.yaml: line 2, byte 22: not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(YAML))
def test_a_malformed_config_file_is_one_line(tmp_path, capsys, monkeypatch, case):
    text, expected = YAML[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.chdir(tmp_path)  # a default run folder would be runs/... here
    output = [] if case.startswith("output_dir") else ["--output_dir", str(tmp_path / "out")]
    fails_cleanly(tmp_path, ["run", str(path), *output], capsys, expected)


# case: (options, words). The same checks as the YAML file's, through the same path.
CLI = {
    "eval batch size 0": (["--eval.batch_size", "0"], "eval.batch_size must be > 0, got 0"),
    "lr a word": (["--train.lr", "fast"], "--train.lr expects a finite number, got 'fast'"),
    "batch size fractional": (["--train.batch_size", "2.5"], "--train.batch_size expects an integer"),
    "num_tasks negative": (["--data.num_tasks", "-1"], "data.num_tasks must be > 0"),
    "lora a word": (["--model.lora", "maybe"], "--model.lora expects true or false"),
    "unknown option": (["--train.nope", "1"], "unrecognized arguments: --train.nope"),
    "option without value": (["--train.lr"], "argument --train.lr: expected one argument"),
    "unknown method": (["--method.name", "magic"], "unknown method"),
    "missing data file": (["--data.dataset", "/no/such/file.jsonl"], "/no/such/file.jsonl: no such file"),
    "val split without val data": (["--eval.split", "val"], "eval.split is val"),
    "tacred without a path": (["--data.dataset", "tacred"], "TACRED is LDC-licensed"),
}


@pytest.mark.parametrize("case", list(CLI))
def test_a_bad_option_is_one_line(tmp_path, capsys, case):
    options, expected = CLI[case]
    fails_cleanly(tmp_path, ["run", *options, "--output_dir", str(tmp_path / "out")], capsys, expected)


def test_a_bad_option_over_a_config_file_names_both(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train: {lr: 0.001}\n")
    argv = ["run", str(tmp_path / "c.yaml"), "--eval.batch_size", "0", "--output_dir", str(tmp_path / "o")]
    fails_cleanly(tmp_path, argv, capsys, "c.yaml + command line: invalid config: eval.batch_size must be > 0")


@pytest.mark.parametrize(
    "argv",
    [["bogus"], ["report"], ["report", "/no/such/run"], ["rescore", "/no/such/run"], ["run", "/no/such.yaml"]],
    ids=["unknown command", "report without runs", "report of nothing", "rescore of nothing", "missing config"],
)
def test_cli_misuse_is_one_line(tmp_path, capsys, argv):
    fails_cleanly(tmp_path, argv, capsys)


def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    fails_cleanly(tmp_path, ["run", "--output_dir", str(tmp_path / "file" / "run")], capsys, "file/run", "ENOTDIR")


# ------------------------------------------------------------------------------------------- run folders

ARGV = [
    "--data.num_tasks", "3", "--data.relations_per_task", "2", "--data.train_size", "8", "--data.test_size", "4",
    "--model.lora_r", "4", "--model.lora_alpha", "8", "--train.epochs", "1", "--train.batch_size", "4",
    "--train.lr", "1e-3", "--method.memory_per_relation", "2", "--eval.batch_size", "8",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 3-task run folder (never changed: each test works on a copy)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", *ARGV, "--model.name", str(tiny_model_dir), "--output_dir", str(out)]) == 0
    return out


def truncate(path: Path, keep: int = 8) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def metrics_lines(run: Path, n: int, tail: bytes = b"") -> None:
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(b"".join(lines[:n]) + tail)


# case: (damage done to a copy of the finished run, words). Run as `errwise run RUN`.
DAMAGE = {
    "checkpoint missing": (
        lambda r: shutil.rmtree(r / "checkpoints" / "task_02"),
        "cannot resume {r} after T3: its checkpoint {r}/checkpoints/task_02 is missing; restore it, or keep only "
        "the first 2 line(s) of metrics.jsonl to train again from T3",
    ),
    "adapter truncated": (
        lambda r: truncate(r / "checkpoints" / "task_02" / "adapter_model.safetensors", 1000),
        "checkpoint file {r}/checkpoints/task_02/adapter_model.safetensors is damaged",
    ),
    "adapter zero bytes": (
        lambda r: truncate(r / "checkpoints" / "task_02" / "adapter_model.safetensors", 0),
        "adapter_model.safetensors is damaged (truncated or not safetensors)",
    ),
    "adapter config garbage": (
        lambda r: (r / "checkpoints" / "task_02" / "adapter_config.json").write_bytes(RANDOM),
        "adapter_config.json is damaged (not readable JSON)",
    ),
    "memory missing": (lambda r: (r / "memory" / "task_02.json").unlink(), "its memory {r}/memory/task_02.json is"),
    "memory garbage": (lambda r: truncate(r / "memory" / "task_02.json"), "memory/task_02.json is damaged"),
    "memory names unknown instances": (
        lambda r: (r / "memory" / "task_02.json").write_text('{"P26": ["nope/1"]}'),
        "names instances the data does not hold",
    ),
    "memory holds lists of lists": (
        lambda r: (r / "memory" / "task_02.json").write_text('{"P26": [["x"]]}'),
        "names instances the data does not hold",
    ),
    "no intact checkpoint before": (
        lambda r: [shutil.rmtree(r / "checkpoints" / f"task_{i:02d}") for i in range(3)],
        "or delete metrics.jsonl to train again from T1",
    ),
    "metrics middle line damaged": (
        lambda r: metrics_lines(r, 1, b'{"task": 1, "acc\n' + (r / "metrics.jsonl").read_bytes().split(b"\n")[2]),
        "metrics.jsonl: line 2 is damaged (not the metrics of task 2)",
    ),
    "metrics tasks out of order": (
        lambda r: metrics_lines(r, 0, b"".join(reversed((r / "metrics.jsonl").read_bytes().splitlines(True)))),
        "metrics.jsonl: line 1 is damaged",
    ),
    "metrics last line repeats a task": (
        lambda r: metrics_lines(r, 2, (r / "metrics.jsonl").read_bytes().splitlines(True)[1]),
        "metrics.jsonl: line 3 is damaged (not the metrics of task 3); delete it and the lines after it",
    ),
    "config.yaml missing": (lambda r: (r / "config.yaml").unlink(), "has no config.yaml"),
    "config.yaml not UTF-8": (lambda r: (r / "config.yaml").write_bytes(RANDOM), "config.yaml: line 1, byte 0"),
    "config.yaml bad value": (
        lambda r: (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("lr: 0.001", "lr: fast")),
        "config.yaml: train.lr expects a finite number",
    ),
    "more tasks than the stream": (
        lambda r: (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("tasks: 3", "tasks: 2")),
        "holds 3 tasks but the stream has 2",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_folder_is_one_line(finished, tmp_path, capsys, case):
    damage, expected = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    damage(run)
    fails_cleanly(tmp_path, ["run", str(run)], capsys, expected.format(r=run))


def test_a_folder_that_is_not_a_run_and_options_on_resume(finished, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fails_cleanly(tmp_path, ["run", str(tmp_path / "empty")], capsys, "is not a run folder (no config.yaml)")
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    fails_cleanly(tmp_path, ["run", str(run), "--train.lr", "1"], capsys, "cannot change options when resuming")


def test_a_run_folder_in_use_is_refused(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    metrics_lines(run, 2)
    with open(run / ".lock", "a+") as held:  # another process's lock (a second open file description conflicts)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fails_cleanly(tmp_path, ["run", str(run)], capsys, f"{run} is in use by another errwise process")


def outcome(run: Path) -> dict:
    return {
        "matrix": (run / "accuracy_matrix.json").read_text(),
        "predictions": [(run / "predictions" / f"task_{i:02d}.jsonl").read_text() for i in range(3)],
        "accuracy": [json.loads(line)["accuracy_row"] for line in (run / "metrics.jsonl").read_text().splitlines()],
    }


# case: (damage, tasks to train again). Each resumes to the numbers of the untouched run.
RECOVER = {
    "torn last metrics line": (lambda r: metrics_lines(r, 2, b'{"task": 2, "relations": ["P'), 1),
    "zero bytes after the last line": (lambda r: metrics_lines(r, 2, b"\0" * 300), 1),
    "last line without its newline": (
        lambda r: (r / "metrics.jsonl").write_bytes((r / "metrics.jsonl").read_bytes().rstrip(b"\n")),
        0,
    ),
    "half-written leftovers": (
        lambda r: (
            metrics_lines(r, 1),
            shutil.copytree(r / "checkpoints" / "task_01", r / "checkpoints" / "task_01.tmp"),
            truncate(r / "checkpoints" / "task_01.tmp" / "adapter_model.safetensors", 100),
            shutil.rmtree(r / "checkpoints" / "task_01"),
            (r / "memory" / "task_01.json.tmp").write_text('{"P2'),
            (r / "metrics.jsonl.tmp").write_text("{"),
        ),
        2,
    ),
}


@pytest.mark.parametrize("case", list(RECOVER))
def test_a_crashed_run_folder_resumes_to_the_same_numbers(finished, tmp_path, capsys, case):
    damage, redo = RECOVER[case]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    damage(run)
    assert main(["run", str(run)]) == 0
    assert f"resuming {run} after task {3 - redo}/3" in capsys.readouterr().out
    assert outcome(run) == outcome(finished)
    assert (run / "metrics.jsonl").read_bytes().endswith(b"}\n") and not list(run.rglob("*.tmp"))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_is_one_line_and_loses_nothing(finished, tmp_path, capsys, monkeypatch, err):
    """The disk fills (or turns read-only) while task 2's memory is written: one line naming the file, the first
    task kept; once there is room the same command resumes to the untouched run's numbers."""
    import errwise.run as run_module

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    metrics_lines(run, 1)
    real = run_module._write_json

    def write_json(path, obj):
        if path.name == "task_01.json":
            raise OSError(err, __import__("os").strerror(err), str(path))
        real(path, obj)

    monkeypatch.setattr(run_module, "_write_json", write_json)
    line = one_line_error(["run", str(run)], capsys, loaded=True)
    assert f"{run}/memory/task_01.json: " in line and errno.errorcode[err] in line and "rerun" in line
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    with open(run / ".lock") as lock:  # released, though `run` raised: another process may take the folder
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    monkeypatch.setattr(run_module, "_write_json", real)
    assert main(["run", str(run)]) == 0
    assert outcome(run) == outcome(finished)


def test_a_report_reads_a_torn_run_folder_as_incomplete(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    metrics_lines(run, 2, b'{"task": 2, "seen_acc')
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--quiet"]) == 0
    assert "incomplete (2/3 tasks)" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("name", ["relations.json", "summary.json", "accuracy_matrix.json"])
def test_a_report_of_a_damaged_file_is_one_line(finished, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    truncate(run / name, 5)
    argv = ["report", str(run), "--out", str(tmp_path / "report")]
    fails_cleanly(tmp_path, argv, capsys, f"{run / name}: line 2, column 2: malformed JSON")
