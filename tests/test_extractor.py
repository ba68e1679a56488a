"""The living extractor: `errwise predict | learn | export` and the Extractor API, on the tiny model (seconds)."""

from __future__ import annotations

import hashlib
import io
import json
import sys

import pytest
import torch

from conftest import tiny_run
from errwise.cli import main
from errwise.data.formats import BUILTIN_DIR
from errwise.errors import ErrwiseError
from errwise.extractor import Extractor, answers, as_instances, instance_row, score_all
from errwise.prompts import plain_prompt
from errwise.run import make_stream

SENTENCES = [
    {"text": "Ada Byron married William King in 1835.", "head": "Ada Byron", "tail": "William King"},
    {"text": "Paris is the capital of France .", "head": "Paris", "tail": "France"},
    {"tokens": ["Bob", "founded", "Acme", "."], "head": [2, 3], "tail": [0, 1], "id": "s3"},
]
NEW = "employer"  # a builtin relation the tiny run below does not learn


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tree_hash(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    out = tiny_run(tiny_model_dir, tmp_path_factory.mktemp("x") / "run")
    assert NEW not in {r for line in read_jsonl(out / "metrics.jsonl") for r in line["relations"]}
    return out


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    """6 instances of a relation the run has not learned, in the user's format (text, head, tail, relation)."""
    rows = [json.loads(line) for line in (BUILTIN_DIR / "instances.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k != "id"} for r in rows if r["relation"] == NEW][:6]
    return write_jsonl(tmp_path_factory.mktemp("data") / "new.jsonl", rows)


@pytest.fixture(scope="module")
def learned(run_dir, new_data, tmp_path_factory):
    """`errwise learn` of the new relation on top of the run, trained hard enough for the tiny model to learn it."""
    out = tmp_path_factory.mktemp("learn") / "ext"
    before = tree_hash(run_dir)
    args = ["learn", str(run_dir), str(new_data), "--output_dir", str(out), "--train.max_steps", "20"]
    assert main([*args, "--train.lr", "1e-2"]) == 0
    assert tree_hash(run_dir) == before  # the source is never changed
    return out


def seen_relations(run_dir):
    return [r for line in read_jsonl(run_dir / "metrics.jsonl") for r in line["relations"]]


def test_predict_from_a_run_folder(run_dir, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", SENTENCES)
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run_dir), str(src), "--top-k", "10", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""  # --out: nothing on stdout
    rows = read_jsonl(out)
    seen = seen_relations(run_dir)
    names = json.loads((run_dir / "relations.json").read_text())
    assert len(rows) == len(SENTENCES)
    for row in rows:
        assert set(row) == {"relation", "name", "score", "top"}
        assert row["relation"] in seen and row["name"] == names[row["relation"]]["name"]
        assert len(row["top"]) == len(seen) and {r for r, _ in row["top"]} == set(seen)  # top-k capped at all
        assert sum(p for _, p in row["top"]) == pytest.approx(1.0, abs=1e-4)  # a distribution over the learned
        assert row["top"][0] == [row["relation"], row["score"]]
        assert [p for _, p in row["top"]] == sorted((p for _, p in row["top"]), reverse=True)
    # Same order as the input: the reversed input gives the reversed answers; top-k 2 keeps the first two.
    write_jsonl(src, SENTENCES[::-1])
    assert main(["predict", str(run_dir), str(src), "--top-k", "2"]) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["relation"] for r in again] == [r["relation"] for r in rows[::-1]]
    assert [r["top"] for r in again] == [r["top"][:2] for r in rows[::-1]]


def test_predict_reads_standard_input_and_answers_null_below_min_score(run_dir, tmp_path, capsys, monkeypatch):
    data = "".join(json.dumps(r) + "\n" for r in SENTENCES).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["predict", str(run_dir), "-", "--min-score", "1", "--top-k", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    for row in rows:  # a best probability below 1 (always, among several relations) is no answer
        assert row["relation"] is None and row["name"] is None and len(row["top"]) == 1 and row["score"] < 1


def test_the_top_answer_is_the_runs_evaluation_prediction(run_dir, tmp_path, capsys):
    """Every test instance of the run, predicted again from the run folder: the same answer as evaluation's
    exact (pruned) search, and the exhaustive scores it ranks are those the pruned search found for the best."""
    from errwise.config import load_saved_config

    cfg = load_saved_config(run_dir / "config.yaml")
    stream = make_stream(cfg)
    test = {x.uid: x for t in stream.tasks for x in t.test}
    evaluated = read_jsonl(run_dir / "predictions" / "task_01.jsonl")
    src = write_jsonl(tmp_path / "test.jsonl", [instance_row(test[r["uid"]]) for r in evaluated])
    assert main(["predict", str(run_dir), str(src)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["relation"] for r in rows] == [r["pred"] for r in evaluated]


def test_exhaustive_scores_agree_with_the_pruned_search(tiny):
    """The probabilities come from scoring every label in full; the pruned search's best label has the same
    score there (same arithmetic), and is the argmax."""
    from errwise.data.formats import load_corpus
    from errwise.evaluate import prompt_ids
    from errwise.model import build_labels, score_candidates

    model, tok = tiny
    corpus = load_corpus("builtin")
    xs, cands = list(corpus.instances[::30]), list(corpus.relations)
    full = score_all(model, tok, xs, cands, batch_size=4)
    prompts = prompt_ids(tok, xs, None, 256)
    best, pruned = score_candidates(model, prompts, build_labels(tok, [r.name for r in cands]), pad_id=tok.pad_token_id)
    assert torch.isfinite(full).all()
    assert full.argmax(1).tolist() == best.tolist()
    rows = torch.arange(len(xs))
    assert torch.allclose(full[rows, best], pruned[rows, best], atol=1e-5)


def test_learn_writes_an_extractor_folder(run_dir, learned, new_data):
    for name in ("extractor.json", "config.yaml", "memory.jsonl", "test.jsonl", "history.jsonl"):
        assert (learned / name).is_file(), name
    assert (learned / "adapter" / "adapter_config.json").is_file()
    meta = json.loads((learned / "extractor.json").read_text())
    seen = seen_relations(run_dir)
    assert [r["id"] for r in meta["relations"]] == [*seen, NEW]
    assert meta["tasks"][-1] == [NEW] and meta["base_model"]
    memory = read_jsonl(learned / "memory.jsonl")
    assert {r["relation"] for r in memory} == {*seen, NEW}  # the instances themselves, not uids
    assert all(r["tokens"] and r["head"] and r["tail"] for r in memory)
    test = read_jsonl(learned / "test.jsonl")
    assert sum(r["relation"] in seen for r in test) == 4 * len(seen)  # the run's test data
    assert sum(r["relation"] == NEW for r in test) == 1  # 20% of 6, held out
    (line,) = read_jsonl(learned / "history.jsonl")
    assert line["new_relations"] == [NEW] and line["method"] == "replay" and line["source"].startswith(str(run_dir))
    assert line["train_instances"] == 5 and line["held_out"] == 1 and line["train_steps"] == 20
    assert line["forgetting"] == pytest.approx(line["old_accuracy_before"] - line["old_accuracy"])
    assert not any(p.name.startswith(".") for p in learned.parent.iterdir())  # no temporary folder left


def test_the_learned_relation_is_predicted(learned, new_data, capsys):
    assert main(["predict", str(learned), str(new_data)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["relation"] for r in rows] == [NEW] * 6


def test_learn_prints_old_and_new_accuracy(run_dir, new_data, tmp_path, capsys):
    out = tmp_path / "ext"
    assert main(["learn", str(run_dir), str(new_data), "--output_dir", str(out), "--train.max_steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "new relations:" in printed and "old relations:" in printed and "forgetting" in printed
    # A second step from the extractor: one more history line, the first one kept.
    names = ["Ann", "Bo", "Cy"]  # 2 instances: 1 trained on, fewer than memory_per_relation
    rows = [
        {"text": f"{a} met {b} at work .", "head": a, "tail": b, "relation": "colleague"}
        for a, b in zip(names, names[1:])
    ]
    more = write_jsonl(tmp_path / "more.jsonl", rows)
    out2 = tmp_path / "ext2"
    assert (
        main(["learn", str(out), str(more), "--output_dir", str(out2), "--method", "errwise", "--train.max_steps", "2"])
        == 0
    )
    history = read_jsonl(out2 / "history.jsonl")
    assert [h["new_relations"] for h in history] == [[NEW], ["colleague"]]
    assert history[1]["method"] == "errwise" and history[1]["source"] == str(out.resolve())
    assert (out2 / "records" / "error_cases").is_dir()  # errwise's initial responses, kept with the step
    assert history[1]["old_test"] == len(read_jsonl(out / "test.jsonl"))


def test_learn_more_of_a_learned_relation_and_a_named_new_one(run_dir, tmp_path, capsys):
    """DATA may bring more instances of a learned relation (its memory is chosen again among the kept and the new
    ones) beside a new relation named by --relations; the split is per relation and seeded."""
    from errwise.extractor import held_out_split

    known = seen_relations(run_dir)[0]
    people = ["Ann", "Bo", "Cy", "Di", "Ed", "Flo"]
    rows = [
        {"text": f"{a} and {b} met at work .", "head": a, "tail": b, "relation": "coworker"}
        for a, b in zip(people, people[1:])
    ]
    rows += [
        {"text": f"{a} works with {b} .", "head": a, "tail": b, "relation": known} for a, b in zip(people, people[2:])
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"coworker": {"name": "colleague of", "description": "They work together."}}))
    out = tmp_path / "ext"
    args = ["learn", str(run_dir), str(data), "--output_dir", str(out), "--relations", str(names)]
    assert main([*args, "--train.max_steps", "2", "--test-fraction", "0.25"]) == 0
    meta = json.loads((out / "extractor.json").read_text())
    assert meta["relations"][-1] == {"id": "coworker", "name": "colleague of", "description": "They work together."}
    (line,) = read_jsonl(out / "history.jsonl")
    assert line["new_relations"] == ["coworker"] and line["more_of"] == [known]
    assert line["held_out"] == 2 and line["train_instances"] == 7  # one of 5 and one of 4, per relation
    memory = [r for r in read_jsonl(out / "memory.jsonl") if r["relation"] == known]
    assert len(memory) == 2 and any(r["id"].startswith("learn2/") for r in read_jsonl(out / "memory.jsonl"))
    xs = Extractor.load(out).test
    assert held_out_split(xs, 0.5, 0) == held_out_split(xs, 0.5, 0)  # seeded


@pytest.mark.parametrize("where", ["train", "save"])
def test_an_interrupted_learn_leaves_nothing(run_dir, new_data, tmp_path, monkeypatch, where):
    import errwise.extractor
    import errwise.run

    def boom(*a, **k):
        raise KeyboardInterrupt

    if where == "train":
        monkeypatch.setattr(errwise.run, "train", boom)
    else:
        monkeypatch.setattr(errwise.extractor, "save_yaml", boom)
    out = tmp_path / "ext"
    before = tree_hash(run_dir)
    with pytest.raises(SystemExit) as e:
        main(["learn", str(run_dir), str(new_data), "--output_dir", str(out), "--train.max_steps", "2"])
    assert e.value.code == 130
    assert list(tmp_path.iterdir()) == [] and tree_hash(run_dir) == before


@pytest.mark.parametrize("merge", [False, True])
def test_export_loads_with_plain_transformers_and_predicts_the_same(learned, new_data, tmp_path, capsys, merge):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    assert main(["export", str(learned), str(out), *(["--merge"] if merge else [])]) == 0
    meta = json.loads((out / "errwise.json").read_text())
    assert meta["merged"] == merge and [r["id"] for r in meta["relations"]][-1] == NEW
    assert (out / ("model.safetensors" if merge else "adapter_model.safetensors")).is_file()
    # transformers alone (its PEFT integration reads adapter_config.json) gives the extractor's logits.
    ext = Extractor.load(learned)
    plain = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    inst = as_instances([SENTENCES[0]], labelled=False)[0]
    prompt = meta["prompt"].format(sentence=inst.text, head=inst.head_text, tail=inst.tail_text)
    assert prompt == plain_prompt(inst)  # the documented template is the one errwise uses
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, ext.model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    # errwise predict accepts the export folder and answers as the extractor does.
    capsys.readouterr()
    assert main(["predict", str(learned), str(new_data)]) == 0
    want = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(out), str(new_data)]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["relation"] for r in got] == [r["relation"] for r in want]
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], abs=1e-4)


def test_the_api_round_trip(run_dir, new_data, tmp_path):
    ext = Extractor.load(run_dir)
    before = ext.predict(SENTENCES, top_k=2)
    records = read_jsonl(new_data)
    new = ext.learn(records, overrides={"train.max_steps": 3}, test_fraction=0.5)
    assert ext.predict(SENTENCES, top_k=2) == before  # learn returns a new extractor; this one is unchanged
    assert [r.id for r in new.relations][-1] == NEW and new.history[-1]["held_out"] == 3
    path = new.save(tmp_path / "saved")
    again = Extractor.load(path)
    assert again.predict(SENTENCES, top_k=5) == new.predict(SENTENCES, top_k=5)
    assert [r.id for r in again.relations] == [r.id for r in new.relations]
    assert {k: len(v) for k, v in again.memory.items()} == {k: len(v) for k, v in new.memory.items()}
    assert [x.uid for x in again.test] == [x.uid for x in new.test]


def _bad(kind, run_dir, tmp_path):
    """(argv, the file the error must name, the line it must name) for each bad input."""
    seen = seen_relations(run_dir)
    names = json.loads((run_dir / "relations.json").read_text())
    inp = tmp_path / "in.jsonl"
    ok = {"text": "Ann met Bo .", "head": "Ann", "tail": "Bo"}
    if kind == "no head":
        write_jsonl(inp, [ok, {"text": "Ann met Bo .", "tail": "Bo"}])
        return ["predict", str(run_dir), str(inp), "--out", str(tmp_path / "o.jsonl")], inp, "line 2"
    if kind == "head not in text":
        write_jsonl(inp, [{**ok, "head": "Carl"}])
        return ["predict", str(run_dir), str(inp), "--out", str(tmp_path / "o.jsonl")], inp, "line 1"
    if kind == "unknown field":
        write_jsonl(inp, [ok, ok, {**ok, "sentense": "x"}])
        return ["predict", str(run_dir), str(inp), "--out", str(tmp_path / "o.jsonl")], inp, "line 3"
    if kind == "not utf-8":
        inp.write_bytes(json.dumps(ok).encode() + b"\n" + json.dumps(ok).encode()[:-2] + b'\xff"}\n')
        return ["predict", str(run_dir), str(inp), "--out", str(tmp_path / "o.jsonl")], inp, "line 2"
    if kind == "empty file":
        inp.write_text("\n")
        return ["predict", str(run_dir), str(inp), "--out", str(tmp_path / "o.jsonl")], inp, "no records"
    if kind == "not a source":
        write_jsonl(inp, [ok])
        return ["predict", str(tmp_path), str(inp), "--out", str(tmp_path / "o.jsonl")], tmp_path, "neither"
    if kind == "no such out folder":
        write_jsonl(inp, [ok])
        return ["predict", str(run_dir), str(inp), "--out", str(tmp_path / "nope" / "o.jsonl")], tmp_path, "nope"
    out = ["--output_dir", str(tmp_path / "new")]
    if kind == "learn: name clash":
        clash = names[seen[0]]["name"]  # a new id whose (default) name is a learned relation's
        write_jsonl(inp, [{**ok, "relation": seen[1]}, {**ok, "relation": clash}, {**ok, "relation": clash}])
        return ["learn", str(run_dir), str(inp), *out], inp, "line 2"
    if kind == "learn: one instance":
        write_jsonl(inp, [{**ok, "relation": "colleague"}, {**ok, "relation": seen[0]}])
        return ["learn", str(run_dir), str(inp), *out], inp, "line 1"
    if kind == "learn: no relation":
        write_jsonl(inp, [{**ok, "relation": "colleague"}, ok])
        return ["learn", str(run_dir), str(inp), *out], inp, "line 2"
    raise AssertionError(kind)


BAD = [
    "no head",
    "head not in text",
    "unknown field",
    "not utf-8",
    "empty file",
    "not a source",
    "no such out folder",
    "learn: name clash",
    "learn: one instance",
    "learn: no relation",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_naming_the_file_and_line(run_dir, tmp_path, capsys, kind):
    argv, named, where = _bad(kind, run_dir, tmp_path)
    files = set(tmp_path.iterdir())
    before = tree_hash(run_dir)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert str(named) in err and where in err, err
    assert set(tmp_path.iterdir()) == files and tree_hash(run_dir) == before  # nothing written


def test_learn_takes_the_served_answers_as_the_initial_responses(run_dir, new_data):
    """`predicted` (what the served model answered, as a user's correction reports it) is errwise's initial response
    on that record: a wrong one is an error case confused with that relation (confront and contrastive examples), a
    right one a correct case; the other records are answered by the model."""
    seen = seen_relations(run_dir)
    gold, wrong = seen[0], seen[1]
    rows = read_jsonl(new_data)[:4]
    rows += [{"text": f"{a} and {b} met at work .", "head": a, "tail": b, "relation": gold} for a, b in ["AB", "CD"]]
    ext = Extractor.load(run_dir)
    new = ext.learn(
        rows,
        method="errwise",
        predicted=[None] * 4 + [wrong, gold],
        test_fraction=0,
        overrides={"train.max_steps": 2, "errwise.error_fraction": None},
    )
    cases = {r["uid"]: r for r in read_jsonl(new.records_dir / "error_cases" / "task_02.jsonl")}
    assert cases["learn2/record:4"] == {"uid": "learn2/record:4", "source": "train", "gold": gold, "pred": wrong,
                                       "correct": False}  # fmt: skip
    assert cases["learn2/record:5"]["pred"] == gold and cases["learn2/record:5"]["correct"]
    assert sum(r["source"] == "memory" for r in cases.values()) == 2 * len(seen)  # the model answered the memory
    kinds = new.history[-1]["train_kinds"]
    assert kinds.get("error", 0) >= 1 and kinds.get("contrastive", 0) >= 1
    with pytest.raises(ErrwiseError, match="'nope' is no learned relation"):
        ext.learn(rows, predicted=[None] * 5 + ["nope"])
    with pytest.raises(ErrwiseError, match="2 answers for 6 records"):
        ext.learn(rows, predicted=[gold, gold])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "RUN", "IN", "--batch-size", "-1"], "--batch-size must be >= 1"),
        (["predict", "RUN", "IN", "--device", "bogus"], "'bogus' is not a device torch knows"),
        (["serve", "RUN", "--port", "99999"], "--port must be in 0..65535"),
    ],
)
def test_bad_options_are_one_line_errors(run_dir, tmp_path, capsys, argv, message):
    src = write_jsonl(tmp_path / "in.jsonl", SENTENCES[:1])
    argv = [str(run_dir) if a == "RUN" else str(src) if a == "IN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of cuda where there is none")
def test_a_cuda_device_without_a_gpu_is_a_one_line_error(run_dir, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", SENTENCES[:1])
    assert main(["predict", str(run_dir), str(src), "--device", "cuda"]) == 2
    assert "no CUDA GPU is available here" in capsys.readouterr().err


def test_learn_and_export_load_the_source_with_the_device_and_dtype_asked(run_dir, new_data, tmp_path, monkeypatch):
    """`learn --model.dtype/--model.device` and `export --device` reach the loading of the source, not only the
    config written afterwards; and a source loaded in another dtype runs and later trains in it."""
    from errwise.config import load_saved_config

    ext = Extractor.load(run_dir, dtype="bfloat16", device="cpu")
    assert next(ext.model.parameters()).dtype == torch.bfloat16
    assert ext.cfg == load_saved_config(run_dir / "config.yaml")  # what it saves later is the source's settings
    asked = []

    def fake_load(path, **kw):
        asked.append(kw)
        raise ErrwiseError("stop here")

    monkeypatch.setattr(Extractor, "load", fake_load)
    out = ["--output_dir", str(tmp_path / "new")]
    assert main(["learn", str(run_dir), str(new_data), *out, "--model.dtype", "float32", "--model.device", "cpu"]) == 2
    assert main(["export", str(run_dir), str(tmp_path / "exp"), "--device", "cpu"]) == 2
    assert asked == [{"device": "cpu", "dtype": "float32"}, {"device": "cpu"}]


def test_predict_applies_the_sources_content_free_calibration(run_dir):
    """With `eval.calibrate content_free`, predict ranks as the run's evaluation does (`predict_with`), and its
    probabilities are the calibrated ones (they differ from the plain scores')."""
    import dataclasses

    from errwise.run import predict_with

    ext = Extractor.load(run_dir)
    plain = ext.predict(SENTENCES, top_k=len(ext.relations))
    ext.cfg = dataclasses.replace(ext.cfg, eval=dataclasses.replace(ext.cfg.eval, calibrate="content_free"))
    calibrated = ext.predict(SENTENCES, top_k=len(ext.relations))
    xs = as_instances(SENTENCES, labelled=False)
    assert [r["relation"] for r in calibrated] == predict_with(ext.cfg, ext.model, ext.tok, xs, ext.relations)
    assert [dict(r["top"]) for r in calibrated] != [dict(r["top"]) for r in plain]


def test_an_interrupted_export_or_predict_says_stopped_not_resume(run_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Extractor, "load", interrupted)
    assert main(["export", str(run_dir), str(tmp_path / "exp")]) == 130
    err = capsys.readouterr().err
    assert "stopped" in err and "errwise run" not in err


def test_predict_merges_the_adapters_once_and_scores_as_before(run_dir, monkeypatch):
    """On CPU the LoRA adapters are merged into a copy once per Extractor, not once per call (seconds each on
    SmolLM2-135M: a server's every request paid it); the scores are those of the per-call path."""
    import errwise.evaluate as evaluate

    ext = Extractor.load(run_dir)
    merges = []
    real = evaluate.merged_copy
    monkeypatch.setattr(evaluate, "merged_copy", lambda m: merges.append(1) or real(m))
    first = ext.predict(SENTENCES, top_k=len(ext.relations))
    again = ext.predict(SENTENCES[:2], top_k=len(ext.relations))
    assert len(merges) == 1 and ext.inference_model() is not ext.model
    per_call = score_all(ext.model, ext.tok, as_instances(SENTENCES, labelled=False), ext.relations)
    assert len(merges) == 2  # score_all on the model itself merges for that call, as evaluation does
    assert torch.equal(
        torch.tensor([[p for _, p in r["top"]] for r in first]),
        torch.tensor([[p for _, p in r["top"]] for r in answers(per_call, ext.relations, len(ext.relations), None)]),
    )
    assert again == first[:2]
