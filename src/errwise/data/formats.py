"""Loaders: each external format becomes a `Corpus` here, at the edge; nothing downstream knows file formats.

Supported: official FewRel JSON, official TACRED JSON, the entity-marker JSON of the CRE codebases, and
errwise JSONL for a user's own data, through `load_corpus`, the one entry point for a `Corpus`; and the few-shot
FCRE files, which fix their own split and tasks, through `load_fcre`. Every problem in a file is one
`ErrwiseError` line naming the file, the record and the fix: a data file the tool cannot read is often a
user's first contact with it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from errwise.data.stream import FEWREL_ID2REL, TACRED_ID2REL
from errwise.data.types import Corpus, FewShotCorpus, Relation, RelationInstance
from errwise.errors import ErrwiseError, read_text

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
FEWREL_URL = "https://raw.githubusercontent.com/thunlp/FewRel/master/data/"
FEWREL_FILES = ("train_wiki.json", "val_wiki.json", "pid2name.json")
FORMATS = (
    "errwise JSONL (.jsonl), FewRel JSON ({relation: [{tokens, h, t}]}), TACRED JSON ([{token, subj_start, "
    "...}]) or entity-marker JSON (tokens with [E11] [E12] [E21] [E22])"
)
_TOKEN = re.compile(r"\w+|[^\w\s]")
_MARKERS = ("[E11]", "[E12]", "[E21]", "[E22]")
_MARK_FIX = "mark the head with [E11] ... [E12] and the tail with [E21] ... [E22], once each"
_TACRED_KINDS = {"per": "person", "org": "organization"}
_TACRED_KEYS = ("id", "relation", "token", "subj_start", "subj_end", "obj_start", "obj_end")
# TACRED keeps the Penn Treebank escapes; an LLM reads brackets better than -LRB-.
_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}


def tokenize(text: str) -> list[str]:
    """Words and single punctuation marks: the tokenisation of errwise JSONL's `text`."""
    return _TOKEN.findall(text)


def _fail(path: Path, where: str, message: str) -> NoReturn:
    raise ErrwiseError(f"{path}: {where}: {message}")


def read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        _fail(
            path,
            f"line {e.lineno}, column {e.colno}",
            f"malformed JSON ({e.msg}); fix the file or fetch it again",
        )
    except RecursionError:
        _fail(path, "whole file", "JSON nested too deeply to be a data file; check that this is the right file")


def _record(path: Path, where: str, rec: Any, keys: Sequence[str]) -> dict:
    if not isinstance(rec, dict):
        _fail(path, where, f"expected an object, got {type(rec).__name__}; give each record {', '.join(keys)}")
    missing = [k for k in keys if k not in rec]
    if missing:
        _fail(path, where, f"missing key(s) {', '.join(missing)}; each record needs {', '.join(keys)}")
    return rec


def _tokens(path: Path, where: str, tokens: Any) -> list[str]:
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t.strip() for t in tokens):
        _fail(path, where, "tokens must be a non-empty list of non-blank strings; fix the record")
    return tokens


def _label(path: Path, where: str, key: str, value: Any) -> str:
    """A relation or instance id: a non-empty string (an instance id may be an integer, read as its digits)."""
    if key == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        _fail(path, where, f'"{key}" must be a non-empty string, got {json.dumps(value):.40}; fix the record')
    return value


def _distinct(path: Path, where: str, head: tuple[int, int], tail: tuple[int, int]) -> None:
    if head == tail:
        _fail(path, where, f"head and tail are the same span {list(head)}; mark two different entities")


def _span(path: Path, where: str, role: str, start: Any, end: Any, n: int) -> tuple[int, int]:
    """An end-exclusive token span, checked against a sentence of n tokens."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
    if not (ints and 0 <= start < end <= n):
        _fail(
            path, where, f"{role} span [{start!r}, {end!r}) is empty or outside the sentence of {n} tokens; "
            "spans are token offsets with 0 <= start < end <= number of tokens",
        )  # fmt: skip
    return start, end


def _default_relation(rel: str) -> Relation:
    """A relation with no name given: TACRED labels read as TACRED names, others with `_` as space."""
    kind, sep, _ = rel.partition(":")
    if sep and kind in _TACRED_KINDS:
        return Relation(rel, tacred_name(rel), tacred_description(rel))
    return Relation(rel, rel.replace("_", " "))


def _unique_names(path: Path, relations: list[Relation]) -> None:
    """The model answers with a relation's name, so two relations must never share one."""
    seen: dict[str, str] = {}
    for r in relations:
        if r.name in seen:
            _fail(path, f"relations {seen[r.name]} and {r.id}", f"share the name {r.name!r}; rename one")
        seen[r.name] = r.id


def read_relations(path: Path) -> dict[str, Relation]:
    """`{id: {"name": ..., "description": ...}}` or FewRel's pid2name layout `{id: [name, description]}`."""
    data = read_json(path)
    fix = 'write {"relation_id": {"name": ..., "description": ...}}'
    if not isinstance(data, dict):
        _fail(path, "top level", f"expected an object; {fix}")
    out = {}
    for rel, v in data.items():
        if isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"].strip():
            out[rel] = Relation(rel, v["name"], str(v.get("description", "")))
        elif isinstance(v, list) and v and isinstance(v[0], str) and v[0].strip():
            out[rel] = Relation(rel, v[0], str(v[1]) if len(v) > 1 else "")
        else:
            _fail(path, f"relation {rel}", f"unreadable entry {v!r:.60}; {fix}")
    _unique_names(path, list(out.values()))
    return out


def _corpus(name: str, source: Path, relations: list[Relation], instances: list[RelationInstance]) -> Corpus:
    """Check what every downstream component relies on: some instances, unique uids, unique names."""
    if not instances:
        _fail(source, "whole file", "no instances; check that this is the right file")
    uids: set[str] = set()
    for x in instances:
        if x.uid in uids:
            _fail(source, f"instance {x.uid}", "duplicate id; give every instance a unique id")
        uids.add(x.uid)
    _unique_names(source, relations)
    return Corpus(name, tuple(relations), tuple(instances))


def _canonical(ids: list[str]) -> list[str]:
    """Canonical CRE order when every id is in one canonical list (so default streams are standard)."""
    for canonical in (FEWREL_ID2REL, TACRED_ID2REL):
        if set(ids) <= set(canonical):
            return [r for r in canonical if r in set(ids)]
    return ids


# ------------------------------------------------------------------------------------------------ FewRel


def _mention(path: Path, where: str, role: str, ent: Any, n: int) -> tuple[int, int]:
    """FewRel's `[name, wikidata_id, [[positions of mention 1], ...]]` -> span of the first mention."""
    ok = isinstance(ent, list) and len(ent) >= 3 and isinstance(ent[2], list) and ent[2]
    positions = ent[2][0] if ok else None
    ints = isinstance(positions, list) and all(isinstance(p, int) and not isinstance(p, bool) for p in positions)
    if not (ints and positions):
        _fail(path, where, f"{role} is not [name, id, [[token positions]]]: {ent!r:.80}; fix the record")
    return _span(path, where, role, min(positions), max(positions) + 1, n)


def _fewrel(files: list[tuple[Path, Any]], names: dict[str, Relation]) -> Corpus:
    instances: list[RelationInstance] = []
    count: dict[str, int] = {}  # per relation, continued across files so uids stay unique
    for path, data in files:
        if not isinstance(data, dict):
            _fail(path, "top level", "expected {relation_id: [records]}; pass a FewRel file")
        for rel, records in data.items():
            if not isinstance(records, list):
                _fail(path, f"relation {rel}", "expected a list of records; pass a FewRel file")
            for i, rec in enumerate(records):
                where = f"relation {rel} record {i}"
                rec = _record(path, where, rec, ("tokens", "h", "t"))
                tokens = _tokens(path, where, rec["tokens"])
                head = _mention(path, where, "head (h)", rec["h"], len(tokens))
                tail = _mention(path, where, "tail (t)", rec["t"], len(tokens))
                _distinct(path, where, head, tail)
                k = count.setdefault(rel, 0)
                instances.append(RelationInstance(f"{rel}/{k}", tuple(tokens), head, tail, rel))
                count[rel] = k + 1
    relations = [names.get(r) or _default_relation(r) for r in _canonical(list(count))]
    return _corpus("fewrel", files[0][0], relations, instances)


def load_fewrel(paths: list[Path], pid2name: Path | None = None) -> Corpus:
    """Official FewRel JSON: fewrel80.json, or train_wiki.json + val_wiki.json merged (80 relations x 700).

    The span is the first mention; names and descriptions come from pid2name.json (else name = id).
    """
    names = read_relations(pid2name) if pid2name else {}
    return _fewrel([(Path(p), read_json(p)) for p in paths], names)


# ------------------------------------------------------------------------------------------------ TACRED


def tacred_name(label: str) -> str:
    """`per:city_of_birth` -> `person city of birth`; the per/org prefix keeps names unique."""
    kind, _, rest = label.partition(":")
    return f"{_TACRED_KINDS.get(kind, kind)} {rest.replace('_', ' ').replace('/', ' or ')}"


def tacred_description(label: str) -> str:
    kind, _, rest = label.partition(":")
    article = "an" if kind == "org" else "a"
    slot = rest.replace("_", " ").replace("/", " or ")
    return f"The head is {article} {_TACRED_KINDS.get(kind, kind)} and the tail is its {slot} (TACRED {label})."


def _tacred(files: list[tuple[Path, Any]]) -> Corpus:
    instances: list[RelationInstance] = []
    for path, data in files:
        if not isinstance(data, list):
            _fail(path, "top level", "expected a list of TACRED records; pass a TACRED file")
        for i, rec in enumerate(data):
            rec = _record(path, f"record {i}", rec, _TACRED_KEYS)
            relation = _label(path, f"record {i}", "relation", rec["relation"])
            if relation == "no_relation":
                continue
            where = f"record {i} (id {_label(path, f'record {i}', 'id', rec['id'])})"
            tokens = [_PTB.get(t, t) for t in _tokens(path, where, rec["token"])]
            n = len(tokens)
            s, e = rec["subj_start"], rec["subj_end"]  # TACRED ends are inclusive
            head = _span(path, where, "subject", s, e + 1 if isinstance(e, int) else e, n)
            s, e = rec["obj_start"], rec["obj_end"]
            tail = _span(path, where, "object", s, e + 1 if isinstance(e, int) else e, n)
            _distinct(path, where, head, tail)
            instances.append(RelationInstance(str(rec["id"]), tuple(tokens), head, tail, relation))
    seen = list(dict.fromkeys(x.relation for x in instances))
    ids = [r for r in TACRED_ID2REL if r in set(seen)] + [r for r in seen if r not in TACRED_ID2REL]
    relations = [Relation(r, tacred_name(r), tacred_description(r)) for r in ids]
    return _corpus("tacred", files[0][0], relations, instances)


def load_tacred(paths: list[Path]) -> Corpus:
    """Official TACRED JSON lists (train/dev/test merged: the CRE protocol re-splits them).

    `no_relation` is dropped. TACRED ends are inclusive; ours exclusive. Head = subject, tail = object.
    """
    return _tacred([(Path(p), read_json(p)) for p in paths])


# ---------------------------------------------------------------------------------------- entity markers


def _unmark(path: Path, where: str, raw: list[str]) -> tuple[list[str], tuple[int, int], tuple[int, int]]:
    """Tokens without the markers, and the head ([E11]..[E12]) and tail ([E21]..[E22]) spans between them."""
    tokens: list[str] = []
    pos: dict[str, int] = {}
    for tok in raw:
        if tok not in _MARKERS:
            tokens.append(tok)
        elif tok in pos:
            _fail(path, where, f"marker {tok} appears twice; {_MARK_FIX}")
        else:
            pos[tok] = len(tokens)
    missing = [m for m in _MARKERS if m not in pos]
    if missing:
        _fail(path, where, f"marker(s) {' '.join(missing)} missing; {_MARK_FIX}")
    head = _span(path, where, "head ([E11] [E12])", pos["[E11]"], pos["[E12]"], len(tokens))
    tail = _span(path, where, "tail ([E21] [E22])", pos["[E21]"], pos["[E22]"], len(tokens))
    _distinct(path, where, head, tail)
    return tokens, head, tail


def _marker(path: Path, data: Any, names: dict[str, Relation]) -> Corpus:
    if not isinstance(data, dict):
        _fail(path, "top level", "expected {relation: [records]}; pass an entity-marker file")
    instances: list[RelationInstance] = []
    count: dict[str, int] = {}
    for key, records in data.items():
        if not isinstance(records, list):
            _fail(path, f"relation {key}", "expected a list of records; pass an entity-marker file")
        for i, rec in enumerate(records):
            where = f"relation {key} record {i}"
            rec = _record(path, where, rec, ("tokens",))
            tokens, head, tail = _unmark(path, where, _tokens(path, where, rec["tokens"]))
            rel = _label(path, where, "relation", rec.get("relation", key))
            k = count.setdefault(rel, 0)
            instances.append(RelationInstance(f"{rel}/{k}", tuple(tokens), head, tail, rel))
            count[rel] = k + 1
    relations = [names.get(r) or _default_relation(r) for r in _canonical(list(count))]
    return _corpus(path.stem, path, relations, instances)


def load_marker(path: Path, relation_names: Path | None = None) -> Corpus:
    """The CRE codebases' `{relation: [{"relation", "tokens": [... "[E11]", head..., "[E12]", ...]}]}`.

    Markers are stripped and become spans; names come from `relation_names` (either relations-file layout).
    """
    names = read_relations(relation_names) if relation_names else {}
    return _marker(Path(path), read_json(path), names)


# ------------------------------------------------------------------------------------------ FCRE files

_FCRE_FIELDS = (
    "relation id", "negative ids", "sentence", "head", "head positions", "tail", "tail positions", "head id",
    "tail id",
)  # fmt: skip


def fcre_folder(folder: Path, shots: int) -> Path:
    """The K-shot folder of an FCRE dataset folder: `{K}shot/`, or `CFRLdata_10_100_10_{K}/` as SCKD names it."""
    for name in (f"{shots}shot", f"CFRLdata_10_100_10_{shots}"):
        if (folder / name).is_dir():
            return folder / name
    raise ErrwiseError(
        f"{folder}: no {shots}shot/ (nor CFRLdata_10_100_10_{shots}/) folder; pass the FCRE dataset folder "
        "(relation_name.txt, rel_index.npy, 5shot/, 10shot/) with --data.path, or a data.shots it holds"
    )


def read_fcre_relations(folder: Path) -> list[Relation]:
    """relation_name.txt (line i: the name of relation id i) and relation_description.txt (line i: its description;
    SCKD's TACRED copy is empty: no descriptions)."""
    names = read_text(folder / "relation_name.txt").splitlines()
    path = folder / "relation_description.txt"
    descriptions = read_text(path).splitlines() if path.is_file() else []
    if descriptions and len(descriptions) != len(names):
        _fail(path, "whole file", f"{len(descriptions)} lines for {len(names)} relation names; one line per relation")
    for i, name in enumerate(names, 1):
        if not name.strip():
            _fail(folder / "relation_name.txt", f"line {i}", "blank relation name; one name per line")
    relations = [
        Relation(str(i), name.strip(), descriptions[i - 1].strip() if descriptions else "")
        for i, name in enumerate(names, 1)
    ]
    _unique_names(folder / "relation_name.txt", relations)
    return relations


def _fcre_span(path: Path, where: str, role: str, field: str, n: int) -> tuple[int, int]:
    """Inclusive 0-based token positions -> the span [min, max + 1), as SCKD's code marks them (first to last)."""
    positions = [int(p) for p in field.split() if p.isdecimal()]
    if not positions or len(positions) != len(field.split()):
        _fail(path, where, f"{role} positions {field!r:.40} are not 0-based token numbers separated by spaces")
    if max(positions) >= n:
        _fail(path, where, f"{role} position {max(positions)} is outside the sentence of {n} tokens (0-based)")
    return min(positions), max(positions) + 1


def read_fcre(path: Path, n_relations: int) -> list[RelationInstance]:
    """One FCRE file (train_0.txt, test_0.txt): one instance per line, tab-separated (`_FCRE_FIELDS`). The span
    comes from the positions; the negative ids, the head/tail text and the Wikidata ids are not read."""
    instances = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {n}"
        fields = line.split("\t")
        if len(fields) != len(_FCRE_FIELDS):
            _fail(path, where, f"{len(fields)} tab-separated fields, expected 9: {' | '.join(_FCRE_FIELDS)}")
        rel = fields[0]
        if not (rel.isdecimal() and 1 <= int(rel) <= n_relations):
            _fail(path, where, f"relation id {rel!r:.20} is not one of 1..{n_relations} (relation_name.txt's lines)")
        tokens = _tokens(path, where, fields[2].split(" "))
        head = _fcre_span(path, where, "head", fields[4], len(tokens))
        tail = _fcre_span(path, where, "tail", fields[6], len(tokens))
        _distinct(path, where, head, tail)
        instances.append(RelationInstance(f"{path.stem}:{n}", tuple(tokens), head, tail, str(int(rel))))
    if not instances:
        _fail(path, "whole file", "no instances; check that this is the right file")
    return instances


def _int_array(path: Path) -> list[int]:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ErrwiseError(
            f"{path}: cannot read as a numpy array ({e}); check the path or fetch the file again"
        ) from None
    if a.ndim != 1 or a.dtype.kind not in "iu":
        _fail(path, "whole file", f"expected a 1-d array of integers, got {a.dtype} of shape {a.shape}")
    return a.tolist()


def load_fcre(folder: Path | str | None, shots: int) -> FewShotCorpus:
    """The FCRE files of SCKD / CPL (docs/data.md): `folder` holds relation_name.txt, relation_description.txt,
    rel_index.npy and `{K}shot/` (train_0.txt, test_0.txt, rel_cluster_label_0.npy); cluster c holds the relations
    `rel_index[i]` whose label is c."""
    if folder is None:
        raise ErrwiseError(
            "split fcre reads the FCRE files: pass their dataset folder (relation_name.txt, rel_index.npy, "
            "5shot/, 10shot/) with --data.path"
        )
    folder = Path(folder)
    relations = read_fcre_relations(folder)
    shot = fcre_folder(folder, shots)
    index, labels = _int_array(folder / "rel_index.npy"), _int_array(shot / "rel_cluster_label_0.npy")
    if sorted(index) != list(range(1, len(relations) + 1)):
        _fail(folder / "rel_index.npy", "whole file", f"not the relation ids 1..{len(relations)} each once")
    if len(labels) != len(index) or set(labels) != set(range(max(labels) + 1)):
        _fail(
            shot / "rel_cluster_label_0.npy",
            "whole file",
            f"expected one cluster label per relation of rel_index.npy ({len(index)}), labels 0..C-1 each used",
        )
    clusters = tuple(tuple(str(r) for r, c in zip(index, labels) if c == k) for k in range(max(labels) + 1))
    train = read_fcre(shot / "train_0.txt", len(relations))
    test = read_fcre(shot / "test_0.txt", len(relations))
    return FewShotCorpus(f"{folder.name}-{shots}shot", tuple(relations), tuple(train), tuple(test), clusters)


# ------------------------------------------------------------------------------------------ errwise JSONL


def _find(path: Path, where: str, role: str, tokens: list[str], mention: Any) -> tuple[int, int]:
    """The first occurrence of the mention's tokens in the sentence."""
    target = tokenize(mention) if isinstance(mention, str) else []
    if not target:
        _fail(path, where, f"{role} {mention!r} is not a non-empty string; give the {role} as words of the text")
    for i in range(len(tokens) - len(target) + 1):
        if tokens[i : i + len(target)] == target:
            return i, i + len(target)
    _fail(
        path, where, f"{role} {mention!r} is not in the text; write the {role} exactly as in the text "
        "(same case), or give tokens with [start, end] spans",
    )  # fmt: skip


def _pair(path: Path, where: str, role: str, v: Any, n: int) -> tuple[int, int]:
    if not (isinstance(v, list) and len(v) == 2):
        _fail(path, where, f"{role} must be [start, end] (token offsets, end exclusive), got {v!r:.40}")
    return _span(path, where, role, v[0], v[1], n)


def json_line(source: Path | str, where: str, line: str) -> Any:
    """One line of a JSONL file, parsed; malformed JSON is a one-line error naming the file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        _fail(source, where, f"malformed JSON at column {e.colno} ({e.msg}); write one JSON object per line")
    except RecursionError:
        _fail(source, where, "JSON nested too deeply; write one flat JSON object per line")


def record_spans(source: Path | str, where: str, rec: dict) -> tuple[list[str], tuple[int, int], tuple[int, int]]:
    """The tokens and the head and tail spans of an errwise JSONL record (text + head/tail strings, or tokens +
    spans), checked: distinct spans inside the tokens."""
    if "tokens" in rec:
        tokens = _tokens(source, where, rec["tokens"])
        head = _pair(source, where, "head", rec["head"], len(tokens))
        tail = _pair(source, where, "tail", rec["tail"], len(tokens))
    elif "text" in rec:
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            _fail(source, where, f'"text" must be a non-empty string, got {json.dumps(rec["text"]):.40}')
        tokens = tokenize(rec["text"])
        head = _find(source, where, "head", tokens, rec["head"])
        tail = _find(source, where, "tail", tokens, rec["tail"])
    else:
        _fail(source, where, 'missing key text or tokens; give "text" and head/tail strings, or "tokens" and spans')
    _distinct(source, where, head, tail)
    return tokens, head, tail


def load_jsonl(path: Path, relations: Path | None = None) -> Corpus:
    """errwise JSONL, one instance per line, either form (README, "Your own data"):

    `{"text": "Marie Curie was born in Warsaw .", "head": "Marie Curie", "tail": "Warsaw", "relation": "r"}`
    (head/tail = first match of their tokens in the text), or
    `{"tokens": [...], "head": [start, end], "tail": [start, end], "relation": "r"}` (end exclusive);
    optional "id" (default `<file stem>:<line>`). Names and descriptions come from `relations`; relations
    follow its order, then first appearance; relations it lists without instances are left out.
    """
    path = Path(path)
    names = read_relations(relations) if relations else {}
    lines = read_text(path).splitlines()
    instances: list[RelationInstance] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {n}"
        rec = _record(path, where, json_line(path, where, line), ("head", "tail", "relation"))
        relation = _label(path, where, "relation", rec["relation"])
        tokens, head, tail = record_spans(path, where, rec)
        uid = _label(path, where, "id", rec["id"]) if "id" in rec else f"{path.stem}:{n}"
        instances.append(RelationInstance(uid, tuple(tokens), head, tail, relation))
    seen = list(dict.fromkeys(x.relation for x in instances))
    ids = [r for r in names if r in set(seen)] + [r for r in seen if r not in names]
    return _corpus(path.stem, path, [names.get(r) or _default_relation(r) for r in ids], instances)


# ------------------------------------------------------------------------------------------- entry point


def fewrel_dir() -> Path:
    """$ERRWISE_FEWREL_DIR, else the cache folder, downloading the official files into it when it has none."""
    if os.environ.get("ERRWISE_FEWREL_DIR"):
        return Path(os.environ["ERRWISE_FEWREL_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "errwise" / "data" / "fewrel"
    if (cache / "fewrel80.json").is_file():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    for name in FEWREL_FILES:
        target = cache / name
        if target.is_file():
            continue
        print(f"downloading {FEWREL_URL}{name} into {cache}", file=sys.stderr)
        try:
            with urllib.request.urlopen(FEWREL_URL + name, timeout=30) as response:
                data = response.read()
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
            raise ErrwiseError(
                f"{FEWREL_URL}{name}: cannot download ({e}), no network?; put train_wiki.json, val_wiki.json "
                f"and pid2name.json in {cache}, or pass a folder holding them with --data.path (or set "
                "ERRWISE_FEWREL_DIR)"
            ) from None
        part = target.with_suffix(".part")  # a broken download never looks like a complete file
        part.write_bytes(data)
        part.replace(target)
    return cache


def _fewrel_folder(folder: Path) -> Corpus:
    if (folder / "fewrel80.json").is_file():
        files = [folder / "fewrel80.json"]
    else:
        files = [folder / f for f in ("train_wiki.json", "val_wiki.json") if (folder / f).is_file()]
    if not files:
        raise ErrwiseError(
            f"{folder}: no fewrel80.json or train_wiki.json/val_wiki.json; pass the folder holding the "
            "FewRel files with --data.path"
        )
    pid2name = folder / "pid2name.json"
    if not pid2name.is_file():
        raise ErrwiseError(f"{pid2name}: missing (relation names); download {FEWREL_URL}pid2name.json there")
    return load_fewrel(files, pid2name)


def _tacred_folder(folder: Path) -> Corpus:
    files = [folder / f for f in ("train.json", "dev.json", "test.json") if (folder / f).is_file()]
    if not files:
        raise ErrwiseError(
            f"{folder}: no train.json, dev.json or test.json; TACRED is LDC-licensed and cannot be "
            "downloaded: pass the folder holding its official JSON files with --data.path"
        )
    return load_tacred(files)


def _detect(data: Any) -> str | None:
    if isinstance(data, list):
        return "tacred" if data and isinstance(data[0], dict) and "subj_start" in data[0] else None
    first = next(iter(data.values()), None) if isinstance(data, dict) else None
    rec = first[0] if isinstance(first, list) and first else None
    if not isinstance(rec, dict):
        return None
    if "h" in rec and "t" in rec:
        return "fewrel"
    if isinstance(rec.get("tokens"), list) and "[E11]" in rec["tokens"]:
        return "marker"
    return None


def _load_path(path: Path, names_file: Path | None) -> Corpus:
    """A file or folder in any supported format; names from `names_file`, else a sibling relations file."""
    if path.is_dir():
        if (path / "instances.jsonl").is_file():
            path = path / "instances.jsonl"
        elif (path / "fewrel80.json").is_file() or (path / "train_wiki.json").is_file():
            return _fewrel_folder(path)
        elif (path / "train.json").is_file():
            return _tacred_folder(path)
        else:
            raise ErrwiseError(f"{path}: no data file found in this folder; supported: {FORMATS}")
    siblings = [path.parent / "relations.json", path.parent / "pid2name.json"]
    names_file = names_file or next((p for p in siblings if p.is_file()), None)
    if path.suffix == ".jsonl":
        return load_jsonl(path, names_file)
    data = read_json(path)
    fmt = _detect(data)
    if fmt == "tacred":
        return _tacred([(path, data)])
    if fmt == "fewrel":
        return _fewrel([(path, data)], read_relations(names_file) if names_file else {})
    if fmt == "marker":
        return _marker(path, data, read_relations(names_file) if names_file else {})
    raise ErrwiseError(f"{path}: unknown data format; supported: {FORMATS}")


def load_corpus(dataset: str, path: str | None = None) -> Corpus:
    """The one entry point.

    `builtin`: the small corpus shipped with errwise (offline). `fewrel`: `path` is a folder with
    fewrel80.json (or train_wiki.json + val_wiki.json) and pid2name.json; without `path`,
    $ERRWISE_FEWREL_DIR or the cache (downloaded once). `tacred`: `path` is the folder with the official
    train/dev/test.json (required). Otherwise `dataset` is a file or folder whose format is detected; then
    `path`, if given, is its relations file (names, descriptions), else a relations.json or pid2name.json
    beside it is used.
    """
    if dataset == "builtin":
        corpus = load_jsonl(BUILTIN_DIR / "instances.jsonl", BUILTIN_DIR / "relations.json")
        return Corpus("builtin", corpus.relations, corpus.instances)
    if dataset == "fewrel":
        return _fewrel_folder(Path(path) if path else fewrel_dir())
    if dataset == "tacred":
        if not path:
            raise ErrwiseError(
                "TACRED is LDC-licensed and not shipped or downloaded: pass the folder holding its "
                "train.json, dev.json and test.json with --data.path"
            )
        return _tacred_folder(Path(path))
    if not Path(dataset).exists():
        raise ErrwiseError(f"{dataset}: no such file or folder, and not builtin, fewrel or tacred; check the name")
    return _load_path(Path(dataset), Path(path) if path else None)
