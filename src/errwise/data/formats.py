"""Loaders: each external format becomes a `Corpus` here, at the edge; nothing downstream knows file formats.

Supported: official FewRel JSON, official TACRED JSON, the entity-marker JSON of CRE codebases, and errwise
JSONL for a user's own data. Every problem is one `ErrwiseError` line naming the file, the record and the fix.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

from errwise.data.stream import FEWREL_ID2REL, TACRED_ID2REL
from errwise.data.types import Corpus, Relation, RelationInstance
from errwise.errors import ErrwiseError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
FEWREL_URL = "https://raw.githubusercontent.com/thunlp/FewRel/master/data/{}"
FEWREL_FILES = ("train_wiki.json", "val_wiki.json", "pid2name.json")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_MARKERS = ("[E11]", "[E12]", "[E21]", "[E22]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ErrwiseError(f"{path}: file not found; check --data.path") from None
    except json.JSONDecodeError as e:
        raise ErrwiseError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg}); fix the file") from None


def _span(path: Path, where: str, span: Any, n: int) -> tuple[int, int]:
    """Check an end-exclusive token span against a sentence of n tokens."""
    ok = isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) for v in span)
    if not ok or not (0 <= span[0] < span[1] <= n):
        raise ErrwiseError(f"{path}: {where}: span {span} is out of range for a sentence of {n} tokens; fix the record")
    return int(span[0]), int(span[1])


def _check_disjoint(path: Path, where: str, head: tuple[int, int], tail: tuple[int, int]) -> None:
    if head[0] < tail[1] and tail[0] < head[1]:
        raise ErrwiseError(f"{path}: {where}: head {head} and tail {tail} overlap; fix the record")


def _order_relations(ids: list[str], canonical: list[str]) -> list[str]:
    """Canonical order for the ids it knows, then the others in first-appearance order."""
    known = [r for r in canonical if r in ids]
    return known + [r for r in ids if r not in set(canonical)]


# ------------------------------------------------------------------------------------------------ FewRel


def _fewrel_span(path: Path, where: str, ent: Any, n: int) -> tuple[int, int]:
    try:
        positions = ent[2][0]
        return _span(path, where, [min(positions), max(positions) + 1], n)
    except (TypeError, IndexError, ValueError):
        raise ErrwiseError(f"{path}: {where}: expected [name, id, [[token positions]]], got {ent!r:.80}") from None


def load_fewrel(paths: list[Path], pid2name: Path | None = None) -> Corpus:
    """Official FewRel JSON (fewrel80.json, or train_wiki.json + val_wiki.json); span = first mention."""
    names = {k: v for k, v in read_json(pid2name).items()} if pid2name else {}
    groups: dict[str, list[RelationInstance]] = {}
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict):
            raise ErrwiseError(f"{path}: expected FewRel layout {{relation: [instances]}}, got a {type(data).__name__}")
        for rel, records in data.items():
            out = groups.setdefault(rel, [])
            for rec in records:
                where = f"relation {rel} record {len(out)}"
                try:
                    tokens, h, t = rec["tokens"], rec["h"], rec["t"]
                except (KeyError, TypeError):
                    raise ErrwiseError(f"{path}: {where}: missing 'tokens', 'h' or 't'; fix the record") from None
                head = _fewrel_span(path, where, h, len(tokens))
                tail = _fewrel_span(path, where, t, len(tokens))
                out.append(RelationInstance(f"{rel}/{len(out)}", tuple(tokens), head, tail, rel))
    ids = _order_relations(list(groups), FEWREL_ID2REL)
    relations = tuple(
        Relation(r, names[r][0], names[r][1]) if r in names else Relation(r, r) for r in ids
    )
    return Corpus("fewrel", relations, tuple(x for r in ids for x in groups[r]))


# ------------------------------------------------------------------------------------------------ TACRED


def tacred_name(label: str) -> str:
    """`per:city_of_birth` -> `person city of birth` (unique: per/org prefixes stay)."""
    kind, _, rest = label.partition(":")
    prefix = {"per": "person", "org": "organization"}.get(kind, kind)
    return f"{prefix} {rest.replace('_', ' ').replace('/', ' or ')}".strip()


def load_tacred(paths: list[Path]) -> Corpus:
    """Official TACRED JSON lists (train/dev/test merged, as CRE codebases re-split them); `no_relation` dropped.
    TACRED spans are end-inclusive; they become end-exclusive here. Head = subject, tail = object."""
    instances: list[RelationInstance] = []
    for path in paths:
        data = read_json(path)
        if not isinstance(data, list):
            raise ErrwiseError(f"{path}: expected a TACRED list of records, got a {type(data).__name__}")
        for i, rec in enumerate(data):
            where = f"record {i}"
            try:
                rel, tokens = rec["relation"], rec["token"]
                subj = [rec["subj_start"], rec["subj_end"] + 1]
                obj = [rec["obj_start"], rec["obj_end"] + 1]
            except (KeyError, TypeError):
                raise ErrwiseError(
                    f"{path}: {where}: missing one of relation, token, subj_start, subj_end, obj_start, obj_end"
                ) from None
            if rel == "no_relation":
                continue
            head, tail = _span(path, where, subj, len(tokens)), _span(path, where, obj, len(tokens))
            instances.append(RelationInstance(str(rec.get("id", f"{path.stem}:{i}")), tuple(tokens), head, tail, rel))
    ids = _order_relations(list(dict.fromkeys(x.relation for x in instances)), TACRED_ID2REL)
    relations = tuple(
        Relation(r, tacred_name(r), f"The relation '{tacred_name(r)}' from TACRED ({r}).") for r in ids
    )
    return Corpus("tacred", relations, tuple(instances))


# ---------------------------------------------------------------------------------------- entity markers


def load_marker(path: Path, relation_names: Path | None = None) -> Corpus:
    """`{relation: [{"relation", "tokens": [... "[E11]", head, "[E12]" ... "[E21]", tail, "[E22]" ...]}]}`."""
    data = read_json(path)
    names = _relation_file(relation_names) if relation_names else {}
    instances: list[RelationInstance] = []
    for rel, records in data.items():
        for i, rec in enumerate(records):
            where = f"relation {rel} record {i}"
            raw = rec.get("tokens") if isinstance(rec, dict) else None
            if not isinstance(raw, list) or any(raw.count(m) != 1 for m in _MARKERS):
                raise ErrwiseError(f"{path}: {where}: tokens must contain each of {' '.join(_MARKERS)} once")
            tokens: list[str] = []
            pos: dict[str, int] = {}
            for tok in raw:
                if tok in _MARKERS:
                    pos[tok] = len(tokens)
                else:
                    tokens.append(tok)
            head = _span(path, where, [pos["[E11]"], pos["[E12]"]], len(tokens))
            tail = _span(path, where, [pos["[E21]"], pos["[E22]"]], len(tokens))
            instances.append(RelationInstance(f"{rel}/{i}", tuple(tokens), head, tail, rec.get("relation", rel)))
    ids = _order_relations(list(dict.fromkeys(x.relation for x in instances)), FEWREL_ID2REL)
    return Corpus(path.stem, tuple(names.get(r, _default_relation(r)) for r in ids), tuple(instances))


# ------------------------------------------------------------------------------------------ errwise JSONL


def _default_relation(rel: str) -> Relation:
    return Relation(rel, rel.replace("_", " "))


def _relation_file(path: Path) -> dict[str, Relation]:
    """`{id: {"name", "description"}}` or the pid2name layout `{id: [name, description]}`."""
    data = read_json(path)
    out = {}
    for rel, v in data.items():
        if isinstance(v, dict) and "name" in v:
            out[rel] = Relation(rel, v["name"], v.get("description", ""))
        elif isinstance(v, list) and v:
            out[rel] = Relation(rel, v[0], v[1] if len(v) > 1 else "")
        else:
            raise ErrwiseError(f"{path}: relation {rel}: expected {{'name': ..., 'description': ...}}; fix the entry")
    return out


def _find(path: Path, where: str, tokens: list[str], mention: str, role: str) -> tuple[int, int]:
    target = tokenize(mention)
    for i in range(len(tokens) - len(target) + 1):
        if target and tokens[i : i + len(target)] == target:
            return i, i + len(target)
    raise ErrwiseError(f"{path}: {where}: {role} {mention!r} is not in the text; give the exact words of the text")


def load_jsonl(path: Path, relations: Path | None = None) -> Corpus:
    """errwise JSONL: `{"text", "head", "tail", "relation"}` or `{"tokens", "head": [s, e], "tail": [s, e],
    "relation"}` per line; optional `"id"`. Relations file: `relations.json` beside it unless given."""
    path = Path(path)
    if relations is None and (path.parent / "relations.json").is_file():
        relations = path.parent / "relations.json"
    names = _relation_file(relations) if relations else {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ErrwiseError(f"{path}: file not found; check --data.dataset/--data.path") from None
    instances: list[RelationInstance] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ErrwiseError(f"{path}: {where}: malformed JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(rec, dict) or "relation" not in rec or "head" not in rec or "tail" not in rec:
            raise ErrwiseError(f"{path}: {where}: needs 'relation', 'head', 'tail' and 'text' or 'tokens'")
        if "tokens" in rec:
            tokens = list(rec["tokens"])
            head = _span(path, where, rec["head"], len(tokens))
            tail = _span(path, where, rec["tail"], len(tokens))
        elif "text" in rec:
            tokens = tokenize(rec["text"])
            head = _find(path, where, tokens, str(rec["head"]), "head")
            tail = _find(path, where, tokens, str(rec["tail"]), "tail")
        else:
            raise ErrwiseError(f"{path}: {where}: needs 'text' (with head/tail strings) or 'tokens' (with spans)")
        _check_disjoint(path, where, head, tail)
        uid = str(rec.get("id", f"{path.stem}:{n}"))
        instances.append(RelationInstance(uid, tuple(tokens), head, tail, str(rec["relation"])))
    seen = list(dict.fromkeys(x.relation for x in instances))
    ids = [r for r in names if r in set(seen)] + [r for r in seen if r not in names]
    return Corpus(path.stem, tuple(names.get(r, _default_relation(r)) for r in ids), tuple(instances))


# ------------------------------------------------------------------------------------------- entry point


def fewrel_dir(path: str | None) -> Path:
    """--data.path, else $ERRWISE_FEWREL_DIR, else the cache (downloading the official files if needed)."""
    if path:
        return Path(path)
    if os.environ.get("ERRWISE_FEWREL_DIR"):
        return Path(os.environ["ERRWISE_FEWREL_DIR"])
    from errwise.model import cache_dir

    target = cache_dir() / "data" / "fewrel"
    if all((target / f).is_file() for f in FEWREL_FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for f in FEWREL_FILES:
        if (target / f).is_file():
            continue
        try:
            with urllib.request.urlopen(FEWREL_URL.format(f), timeout=20) as r:
                data = r.read()
        except OSError as e:
            raise ErrwiseError(
                f"FewRel is not in {target} and could not be downloaded ({e}); no network? "
                "download train_wiki.json, val_wiki.json, pid2name.json from github.com/thunlp/FewRel and pass "
                "--data.path FOLDER (or set ERRWISE_FEWREL_DIR)"
            ) from None
        (target / f).with_suffix(".tmp").write_bytes(data)
        (target / f).with_suffix(".tmp").rename(target / f)
    return target


def _detect(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "jsonl"
    data = read_json(path)
    if isinstance(data, list):
        if data and isinstance(data[0], dict) and "subj_start" in data[0]:
            return "tacred"
    elif isinstance(data, dict) and data:
        first = next(iter(data.values()))
        rec = first[0] if isinstance(first, list) and first else None
        if isinstance(rec, dict) and "h" in rec and "t" in rec:
            return "fewrel"
        if isinstance(rec, dict) and "[E11]" in rec.get("tokens", []):
            return "marker"
    raise ErrwiseError(
        f"{path}: unknown format; supported: FewRel JSON, TACRED JSON, entity-marker JSON, errwise JSONL (see README)"
    )


def load_corpus(dataset: str, path: str | None = None) -> Corpus:
    """The one entry point: `builtin`, `fewrel`, `tacred`, or a path to a data file/folder."""
    if dataset == "builtin":
        corpus = load_jsonl(BUILTIN_DIR / "instances.jsonl", BUILTIN_DIR / "relations.json")
        return Corpus("builtin", corpus.relations, corpus.instances)
    if dataset == "fewrel":
        folder = fewrel_dir(path)
        files = [folder / "fewrel80.json"] if (folder / "fewrel80.json").is_file() else [
            folder / f for f in ("train_wiki.json", "val_wiki.json") if (folder / f).is_file()
        ]
        if not files:
            raise ErrwiseError(
                f"{folder}: no fewrel80.json or train_wiki.json/val_wiki.json; pass the FewRel folder with --data.path"
            )
        pid2name = folder / "pid2name.json"
        return load_fewrel(files, pid2name if pid2name.is_file() else None)
    if dataset == "tacred":
        if not path:
            raise ErrwiseError(
                "TACRED is LDC-licensed and not downloadable: pass the folder holding train.json, dev.json and "
                "test.json with --data.path"
            )
        folder = Path(path)
        files = [folder / f for f in ("train.json", "dev.json", "test.json") if (folder / f).is_file()]
        if not files:
            raise ErrwiseError(f"{folder}: no train.json/dev.json/test.json; pass the TACRED json folder")
        return load_tacred(files)
    p = Path(path or dataset)
    if p.is_dir():
        raise ErrwiseError(f"{p} is a folder; pass --data.dataset fewrel or tacred with --data.path {p}, or a file")
    if not p.exists():
        raise ErrwiseError(f"unknown dataset {dataset!r}: not builtin/fewrel/tacred and no such file")
    fmt = _detect(p)
    if fmt == "jsonl":
        return load_jsonl(p)
    if fmt == "tacred":
        return load_tacred([p])
    if fmt == "fewrel":
        pid2name = p.parent / "pid2name.json"
        return load_fewrel([p], pid2name if pid2name.is_file() else None)
    return load_marker(p, p.parent / "relations.json" if (p.parent / "relations.json").is_file() else None)
