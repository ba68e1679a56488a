"""Every loader on a tiny fixture of its format, the entry point's detection, and every user-facing error."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from errwise.data import formats
from errwise.data.formats import load_corpus, load_fewrel, load_jsonl, load_marker, load_tacred
from errwise.data.stream import FEWREL_ID2REL
from errwise.errors import ErrwiseError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FEWREL = SHARED / "fewrel"


def check(x):
    """The invariants of every instance: spans inside the sentence, non-empty, end exclusive."""
    assert 0 <= x.head[0] < x.head[1] <= len(x.tokens)
    assert 0 <= x.tail[0] < x.tail[1] <= len(x.tokens)


# ------------------------------------------------------------------------------------------------ FewRel


def test_fewrel_spans_names_and_canonical_order():
    c = load_fewrel([FIXTURES / "fewrel_small.json"], FIXTURES / "pid2name_small.json")
    assert c.name == "fewrel"
    assert [r.id for r in c.relations] == ["P17", "P131", "P26"]  # canonical order, not the file's
    assert c.relation("P26").name == "spouse"
    assert c.relation("P17").description == "sovereign state of this item"
    assert {r: len(v) for r, v in c.by_relation().items()} == {"P17": 6, "P131": 6, "P26": 6}
    x = c.instances[0]
    assert (x.uid, x.head_text, x.tail_text) == ("P26/0", "Orla Venn", "Tomas Ridel")
    x = next(x for x in c.instances if x.uid == "P26/1")
    assert (x.head_text, x.tail_text) == ("Ada Brunn", "Piet Calloway")  # tail before head in the sentence
    for x in c.instances:
        check(x)


def test_fewrel_without_pid2name_uses_ids_and_several_files_continue_the_index(tmp_path):
    data = json.loads((FIXTURES / "fewrel_small.json").read_text())
    a, b = tmp_path / "train_wiki.json", tmp_path / "val_wiki.json"
    a.write_text(json.dumps({r: v[:4] for r, v in data.items()}))
    b.write_text(json.dumps({"P26": data["P26"][4:], "P17": data["P17"][4:]}))
    c = load_fewrel([a, b], None)
    assert [r.name for r in c.relations] == ["P17", "P131", "P26"]
    assert sorted(x.uid for x in c.instances if x.relation == "P26") == [f"P26/{i}" for i in range(6)]
    assert len(c.instances) == 16


def test_fewrel_relations_outside_the_canonical_list_keep_file_order(tmp_path):
    data = json.loads((FIXTURES / "fewrel_small.json").read_text())
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({"P26": data["P26"], "Pnew": data["P17"]}))
    assert [r.id for r in load_fewrel([path], None).relations] == ["P26", "Pnew"]


@pytest.fixture(scope="module")
def fewrel80():
    if not (FEWREL / "fewrel80.json").is_file():
        pytest.skip(f"FewRel data not found at {FEWREL} (shared data folder absent)")
    return load_corpus("fewrel", str(FEWREL))


def test_fewrel80_loads_80_relations_of_700(fewrel80):
    assert [r.id for r in fewrel80.relations] == list(FEWREL_ID2REL)
    assert all(len(v) == 700 for v in fewrel80.by_relation().values())
    assert fewrel80.relation("P156").name == "followed by"
    for x in fewrel80.instances[::997]:
        check(x)


# ------------------------------------------------------------------------------------------------ TACRED


def test_tacred_drops_no_relation_and_makes_ends_exclusive():
    c = load_tacred([FIXTURES / "tacred_small" / "train.json"])
    assert c.name == "tacred" and len(c.instances) == 10  # 12 records, 2 no_relation
    # TACRED_ID2REL order, then relations outside it (per:country_of_death) in file order
    assert [r.id for r in c.relations] == [
        "org:founded_by", "per:title", "org:top_members/employees",
        "per:city_of_birth", "per:country_of_death",
    ]  # fmt: skip
    assert c.relation("per:city_of_birth").name == "person city of birth"
    assert c.relation("org:top_members/employees").name == "organization top members or employees"
    assert "person" in c.relation("per:title").description
    x = c.instances[0]
    assert (x.uid, x.relation) == ("t01", "per:city_of_birth")
    assert (x.head_text, x.tail_text) == ("Anya Petrel", "Lowmere")  # subject and object, ends inclusive
    x = next(x for x in c.instances if x.uid == "t03")
    assert x.text.startswith("Quill Systems ( founded by Maren Oaks )")  # -LRB- / -RRB- read as brackets
    assert (x.head_text, x.tail_text) == ("Quill Systems", "Maren Oaks")
    for x in c.instances:
        check(x)


# ---------------------------------------------------------------------------------------- entity markers


def test_marker_strips_markers_into_spans():
    c = load_marker(FIXTURES / "marker_small.json", FIXTURES / "pid2name_small.json")
    assert [r.id for r in c.relations] == ["P17", "P26"]
    assert c.relation("P26").name == "spouse"
    x = c.instances[1]
    assert x.uid == "P26/1" and not any(t.startswith("[E") for t in x.tokens)
    assert (x.head_text, x.tail_text) == ("ada brunn", "piet calloway")
    assert load_marker(FIXTURES / "marker_small.json").relation("P17").name == "P17"


# ------------------------------------------------------------------------------------------ errwise JSONL


def test_jsonl_text_and_token_forms():
    c = load_jsonl(FIXTURES / "user_small.jsonl", FIXTURES / "user_relations.json")
    assert c.name == "user_small"
    # relations-file order (its unused relation left out), then first appearance
    assert [(r.id, r.name) for r in c.relations] == [
        ("founded_by", "founded by"), ("place_of_birth", "place of birth"), ("capital_of", "capital of"),
    ]  # fmt: skip
    assert c.relation("place_of_birth").description == "The tail is where the head person was born."
    by_uid = {x.uid: x for x in c.instances}
    assert list(by_uid) == ["u1", "user_small:2", "user_small:3", "user_small:4", "u5", "user_small:6"]
    assert by_uid["u1"].tokens == ("Marie", "Curie", "was", "born", "in", "Warsaw", ".")
    assert (by_uid["u1"].head, by_uid["u1"].tail) == ((0, 2), (5, 6))
    assert (by_uid["user_small:4"].head_text, by_uid["user_small:4"].tail_text) == ("Ilse Marow", "Kraków")
    assert (by_uid["u5"].head_text, by_uid["u5"].tail_text) == ("Corvid Labs", "Tamsin Rhee")
    assert [r.name for r in load_jsonl(FIXTURES / "user_small.jsonl").relations] == [
        "place of birth", "founded by", "capital of",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- entry point


def test_load_corpus_detects_every_format(tmp_path):
    assert load_corpus(str(FIXTURES / "user_small.jsonl")).name == "user_small"
    named = load_corpus(str(FIXTURES / "user_small.jsonl"), str(FIXTURES / "user_relations.json"))
    assert named.relation("founded_by").description.startswith("The head organization")
    fewrel = load_corpus(str(FIXTURES / "fewrel_small.json"), str(FIXTURES / "pid2name_small.json"))
    assert fewrel.name == "fewrel" and fewrel.relation("P26").name == "spouse"
    assert load_corpus(str(FIXTURES / "tacred_small" / "train.json")).name == "tacred"
    assert load_corpus(str(FIXTURES / "tacred_small")).name == "tacred"
    assert load_corpus("tacred", str(FIXTURES / "tacred_small")).name == "tacred"
    assert load_corpus(str(FIXTURES / "marker_small.json")).name == "marker_small"
    # a folder in the builtin layout, with its relations.json found beside the data
    shutil.copy(FIXTURES / "user_small.jsonl", tmp_path / "instances.jsonl")
    shutil.copy(FIXTURES / "user_relations.json", tmp_path / "relations.json")
    assert load_corpus(str(tmp_path)).relation("place_of_birth").name == "place of birth"


def test_builtin_contract(tmp_path, monkeypatch):
    """`builtin` reads relations.json + instances.jsonl from the package; checked on a stand-in folder."""
    shutil.copy(FIXTURES / "user_small.jsonl", tmp_path / "instances.jsonl")
    shutil.copy(FIXTURES / "user_relations.json", tmp_path / "relations.json")
    monkeypatch.setattr(formats, "BUILTIN_DIR", tmp_path)
    c = load_corpus("builtin")
    assert c.name == "builtin" and len(c.instances) == 6 and c.relations[0].name == "founded by"


@pytest.mark.skipif(not (formats.BUILTIN_DIR / "instances.jsonl").is_file(), reason="builtin data not written yet")
def test_builtin_data_loads():
    c = load_corpus("builtin")
    assert c.name == "builtin" and len(c.relations) >= 2
    for x in c.instances:
        check(x)


def fewrel_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "fewrel_small.json", folder / "fewrel80.json")
    shutil.copy(FIXTURES / "pid2name_small.json", folder / "pid2name.json")
    return folder


def test_fewrel_folder_from_path_env_or_cache(tmp_path, monkeypatch):
    assert len(load_corpus("fewrel", str(fewrel_folder(tmp_path / "a"))).instances) == 18
    monkeypatch.setenv("ERRWISE_FEWREL_DIR", str(fewrel_folder(tmp_path / "b")))
    assert len(load_corpus("fewrel").instances) == 18
    monkeypatch.delenv("ERRWISE_FEWREL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fewrel_folder(tmp_path / "cache" / "errwise" / "data" / "fewrel")
    assert len(load_corpus("fewrel").instances) == 18


def test_fewrel_download_into_the_cache(tmp_path, monkeypatch):
    data = json.loads((FIXTURES / "fewrel_small.json").read_text())
    served = {
        "train_wiki.json": {"P26": data["P26"], "P17": data["P17"]},
        "val_wiki.json": {"P131": data["P131"]},
        "pid2name.json": json.loads((FIXTURES / "pid2name_small.json").read_text()),
    }
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(json.dumps(served[url.rsplit("/", 1)[1]]).encode())

    monkeypatch.delenv("ERRWISE_FEWREL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    c = load_corpus("fewrel")
    assert urls == [formats.FEWREL_URL + f for f in formats.FEWREL_FILES]
    assert len(c.instances) == 18 and [r.id for r in c.relations] == ["P17", "P131", "P26"]
    assert sorted(p.name for p in (tmp_path / "errwise" / "data" / "fewrel").iterdir()) == sorted(served)
    load_corpus("fewrel")
    assert len(urls) == 3  # cached: no second download


def test_fewrel_without_network_says_how_to_pass_a_path(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.delenv("ERRWISE_FEWREL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ErrwiseError, match="no network.*--data.path") as e:
        load_corpus("fewrel")
    assert "train_wiki.json" in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "errwise" / "data" / "fewrel").iterdir())  # nothing half-written


def test_tacred_needs_a_path():
    with pytest.raises(ErrwiseError, match="LDC.*--data.path"):
        load_corpus("tacred")


# ------------------------------------------------------------------------------------------------ errors

FEWREL_REC = {"tokens": ["a", "b", "c"], "h": ["a", "", [[0]]], "t": ["c", "", [[2]]]}
TACRED_REC = {
    "id": "x1", "relation": "per:title", "token": ["a", "b", "c"],
    "subj_start": 0, "subj_end": 0, "obj_start": 2, "obj_end": 2,
}  # fmt: skip
MARKER_TOKENS = ["[E11]", "a", "[E12]", "b", "[E21]", "c", "[E22]"]


def fewrel_with(**changes):
    return {"P26": [FEWREL_REC, {**FEWREL_REC, **changes}]}


def tacred_with(**changes):
    return [TACRED_REC, {**TACRED_REC, **changes}]


def text_line(**changes):
    return [{"text": "a b", "head": "a", "tail": "b", "relation": "r", **changes}]


def token_line(**changes):
    return [{"tokens": ["a", "b"], "head": [0, 1], "tail": [1, 2], "relation": "r", **changes}]


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


LOADERS = {  # by file name; other names go through the entry point's detection
    "f.json": lambda p: load_fewrel([p], None),
    "t.json": lambda p: load_tacred([p]),
    "m.json": lambda p: load_marker(p),
    "u.jsonl": lambda p: load_jsonl(p),
}
BAD_FILES = {  # case: (file name, content, words the message must contain after the path)
    "json syntax": ("bad.json", '{"P26": [\n  {"tokens": ["a",]}\n]}', "line 2, column 19: malformed JSON"),
    "fewrel missing key": (
        "f.json",
        {"P26": [without(FEWREL_REC, "t")]},
        "relation P26 record 0: missing key(s) t",
    ),
    "fewrel span out of range": ("f.json", fewrel_with(t=["c", "", [[3]]]), "record 1: tail (t) span [3, 4)"),
    "fewrel empty mention": ("f.json", fewrel_with(h=["a", "", [[]]]), "record 1: head (h) is not"),
    "tacred missing key": ("t.json", [without(TACRED_REC, "obj_end")], "record 0: missing key(s) obj_end"),
    "tacred span out of range": ("t.json", tacred_with(obj_end=3), "record 1 (id x1): object span [2, 4)"),
    "tacred empty span": ("t.json", tacred_with(subj_start=2, subj_end=1), "subject span [2, 2) is empty"),
    "marker missing": (
        "m.json",
        {"P26": [{"tokens": MARKER_TOKENS[:-1]}]},
        "record 0: marker(s) [E22] missing",
    ),
    "marker empty": (
        "m.json",
        {"P26": [{"tokens": ["[E11]", "[E12]", "a", *MARKER_TOKENS[3:]]}]},
        "span [0, 0)",
    ),
    "jsonl syntax": (
        "u.jsonl",
        json.dumps(text_line()[0]) + '\n{"text": ',
        "line 2: malformed JSON at column",
    ),
    "jsonl missing key": ("u.jsonl", [without(text_line()[0], "tail")], "line 1: missing key(s) tail"),
    "jsonl no text": ("u.jsonl", [without(text_line()[0], "text")], "line 1: missing key text or tokens"),
    "jsonl head not found": ("u.jsonl", text_line(head="A"), "line 1: head 'A' is not in the text"),
    "jsonl span out of range": ("u.jsonl", token_line(tail=[1, 3]), "line 1: tail span [1, 3)"),
    "jsonl empty span": ("u.jsonl", token_line(head=[1, 1]), "line 1: head span [1, 1) is empty"),
    "jsonl duplicate id": ("u.jsonl", token_line(id="x") * 2, "instance x: duplicate id"),
    "jsonl empty file": ("u.jsonl", "\n", "whole file: no instances"),
    "unknown format": (
        "other.json",
        {"rows": [{"sentence": "a b"}]},
        "unknown data format; supported: errwise",
    ),
    "unknown list format": ("other.json", [{"sentence": "a b"}], "unknown data format"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_errors_name_the_file_the_record_and_the_fix(tmp_path, case):
    name, content, expected = BAD_FILES[case]
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in content))
    else:
        path.write_text(json.dumps(content))
    load = LOADERS.get(name, lambda p: load_corpus(str(p)))
    with pytest.raises(ErrwiseError) as e:
        load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
    if name in LOADERS:  # the same file through the entry point fails the same way
        with pytest.raises(ErrwiseError, match=name):
            load_corpus(str(path))


def test_relations_file_errors(tmp_path):
    rels = tmp_path / "rels.json"
    rels.write_text(json.dumps({"founded_by": {"description": "no name"}}))
    with pytest.raises(ErrwiseError, match=r"rels\.json: relation founded_by: unreadable entry"):
        load_jsonl(FIXTURES / "user_small.jsonl", rels)
    rels.write_text(json.dumps({"founded_by": ["same"], "place_of_birth": ["same"]}))
    with pytest.raises(ErrwiseError, match=r"rels\.json: relations founded_by and place_of_birth: share the name"):
        load_jsonl(FIXTURES / "user_small.jsonl", rels)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(ErrwiseError, match="nothere.jsonl: no such file"):
        load_corpus(str(tmp_path / "nothere.jsonl"))
    with pytest.raises(ErrwiseError, match=f"{tmp_path.name}: no fewrel80.json"):
        load_corpus("fewrel", str(tmp_path))
    with pytest.raises(ErrwiseError, match=f"{tmp_path.name}: no train.json"):
        load_corpus("tacred", str(tmp_path))
    with pytest.raises(ErrwiseError, match=f"{tmp_path.name}: no data file found"):
        load_corpus(str(tmp_path))
    shutil.copy(FIXTURES / "fewrel_small.json", tmp_path / "fewrel80.json")
    with pytest.raises(ErrwiseError, match="pid2name.json: missing"):
        load_corpus("fewrel", str(tmp_path))
    with pytest.raises(ErrwiseError, match="gone.json: cannot read"):
        load_fewrel([tmp_path / "gone.json"], None)
