"""Instructor chat backends: retries against stdlib fake servers, the disk cache, LocalChat, and a real
OpenAI-compatible server (`transformers serve` on the tiny model, on loopback)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from conftest import CHAT_TEMPLATE, free_port
from errwise.errors import ErrwiseError
from errwise.instructor import client
from errwise.instructor.client import CachedChat, ChatBackend, ChatReply, LocalChat, OpenAIChat

MESSAGES = [{"role": "system", "content": "You write data."}, {"role": "user", "content": "Relation: founded by"}]
KEY = "sk-test-S3CRET-do-not-leak"
Response = tuple[int, dict[str, str], bytes]


def ok(text: str = "hello there", usage: bool = True) -> Response:
    body: dict = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": text}}]}
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


@contextmanager
def fake_server(respond: Callable[[int, threading.Event], Response]) -> Iterator[SimpleNamespace]:
    """A stdlib HTTP server on 127.0.0.1:<free port>; `respond(n, release)` answers the n-th request (1-based)."""
    seen: list[dict] = []
    release = threading.Event()  # set at teardown: frees handlers that wait (the slow server)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
            status, headers, payload = respond(len(seen), release)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up already (timeout test)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", requests=seen)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record the backoff sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(client, "_sleep", recorded.append)
    return recorded


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    for name in client.API_KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


def ask(chat: ChatBackend, seed: int = 0) -> ChatReply:
    return chat.chat(MESSAGES, temperature=0.0, max_tokens=8, seed=seed)


# ---- OpenAIChat against fake servers ----


def test_429_twice_then_ok_honours_retry_after(sleeps):
    def respond(n, _):
        return (429, {"Retry-After": "0"}, b'{"error": "slow down"}') if n <= 2 else ok()

    with fake_server(respond) as srv:
        reply = OpenAIChat(srv.base_url, "m", backoff=5.0).chat(MESSAGES, temperature=0.7, max_tokens=64, seed=3)
    assert reply == ChatReply("hello there", 11, 3, reply.seconds)
    assert len(srv.requests) == 3 and sleeps == [0.0, 0.0]  # Retry-After: 0 beats backoff=5
    first = srv.requests[0]
    assert first["path"] == "/v1/chat/completions" and "Authorization" not in first["headers"]
    assert first["json"] == {
        "model": "m",
        "messages": MESSAGES,
        "temperature": 0.7,
        "max_tokens": 64,
        "seed": 3,
        "stream": False,
    }


def test_5xx_backoff_is_exponential_then_fails(sleeps):
    with fake_server(lambda n, _: (503, {}, b"overloaded")) as srv:
        chat = OpenAIChat(srv.base_url + "/", "m", max_retries=3, backoff=1.0)
        with pytest.raises(ErrwiseError, match=r"HTTP 503 .* after 4 attempts; check that the server is running"):
            ask(chat)
    assert len(srv.requests) == 4 and sleeps == [1.0, 2.0, 4.0]
    assert srv.requests[0]["path"] == "/v1/chat/completions"  # trailing slash on base_url is fine


def test_sleep_is_capped_at_30_s(sleeps):
    with fake_server(lambda n, _: (429, {"Retry-After": "100"}, b"") if n == 1 else ok()) as srv:
        ask(OpenAIChat(srv.base_url, "m", backoff=1000.0))
    assert sleeps == [30.0]


@pytest.mark.parametrize(
    "payload",
    [b"<html>bad gateway</html>", b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}'],
    ids=["not-json", "no-choices", "null-content"],
)
def test_malformed_reply_is_retried_then_fails(sleeps, payload):
    with fake_server(lambda n, _: (200, {"Content-Type": "application/json"}, payload)) as srv:
        with pytest.raises(ErrwiseError, match="malformed response .* after 3 attempts"):
            ask(OpenAIChat(srv.base_url, "m", max_retries=2))
    assert len(srv.requests) == 3


def test_malformed_once_then_ok(sleeps):
    with fake_server(lambda n, _: (200, {}, b"garbage") if n == 1 else ok("fine", usage=False)) as srv:
        reply = ask(OpenAIChat(srv.base_url, "m"))
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("fine", 0, 0)  # no usage: zeros


def test_400_fails_at_once_with_a_short_body_and_no_key(sleeps):
    body = ("model not found; you sent " + KEY + " " + "x" * 1000).encode()
    with fake_server(lambda n, _: (400, {}, body)) as srv:
        with pytest.raises(ErrwiseError) as info:
            ask(OpenAIChat(srv.base_url, "m", api_key=KEY))
    message = str(info.value)
    assert len(srv.requests) == 1 and sleeps == []
    assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "HTTP 400" in message and "model not found" in message and KEY not in message
    assert len(message) < 400 and "\n" not in message


def test_401_names_the_key_variables(sleeps):
    with fake_server(lambda n, _: (401, {}, b'{"error": "bad key"}')) as srv:
        with pytest.raises(ErrwiseError, match=r"HTTP 401.*ERRWISE_INSTRUCTOR_API_KEY"):
            ask(OpenAIChat(srv.base_url, "m", api_key=KEY))


def test_closed_port_fails_after_retries_naming_the_url():
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.perf_counter()
    with pytest.raises(ErrwiseError, match=r"cannot connect .* after 3 attempts") as info:
        ask(OpenAIChat(base_url, "m", max_retries=2, backoff=0.01))
    assert base_url in str(info.value) and time.perf_counter() - t0 < 5


def test_slow_server_times_out():
    def respond(n, release):
        release.wait(10)
        return ok()

    with fake_server(respond) as srv:
        t0 = time.perf_counter()
        with pytest.raises(ErrwiseError, match=r"no answer within 0.2 s after 2 attempts.*instructor.timeout"):
            ask(OpenAIChat(srv.base_url, "m", timeout=0.2, max_retries=1, backoff=0.01))
        assert time.perf_counter() - t0 < 5
    assert len(srv.requests) == 2


def test_key_is_sent_but_never_shown(sleeps):
    with fake_server(lambda n, _: (500, {}, KEY.encode())) as srv:
        chat = OpenAIChat(srv.base_url, "m", api_key=KEY, max_retries=1)
        with pytest.raises(ErrwiseError) as info:
            ask(chat)
    assert [r["headers"]["Authorization"] for r in srv.requests] == [f"Bearer {KEY}"] * 2
    for shown in (str(info.value), repr(info.value), repr(chat), chat.description):
        assert KEY not in shown
    assert chat.description == f"openai:{srv.base_url} model=m"


@pytest.mark.parametrize("env", ["ERRWISE_INSTRUCTOR_API_KEY", "OPENAI_API_KEY"])
def test_key_from_environment(monkeypatch, env):
    monkeypatch.setenv(env, KEY + "\n")  # a trailing newline from `cat key.txt` is stripped
    with fake_server(lambda n, _: ok()) as srv:
        ask(OpenAIChat(srv.base_url, "m"))
        ask(OpenAIChat(srv.base_url, "m", api_key=""))  # explicit empty key: no header
    assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "Authorization" not in srv.requests[1]["headers"]


def test_loopback_ignores_http_proxy(monkeypatch):
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with fake_server(lambda n, _: ok()) as srv:
        assert ask(OpenAIChat(srv.base_url, "m", max_retries=0)).text == "hello there"


def test_bad_settings_fail_clearly():
    with pytest.raises(ErrwiseError) as info:
        OpenAIChat("http://127.0.0.1:1/v1", "m", api_key="sk-has space")
    assert "sk-has space" not in str(info.value)
    with pytest.raises(ErrwiseError, match="not an http"):
        OpenAIChat("127.0.0.1:8000/v1", "m")
    with pytest.raises(ErrwiseError, match="timeout must be > 0"):
        OpenAIChat("http://127.0.0.1:1/v1", "m", timeout=0)
    assert "hunter2" not in OpenAIChat("http://user:hunter2@127.0.0.1:1/v1", "m").description


def test_retry_after_parsing():
    assert client._retry_after(None) is None and client._retry_after("soon") is None
    assert client._retry_after("2.5") == 2.5 and client._retry_after("-3") == 0.0
    assert client._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


# ---- CachedChat ----


def test_cache_hits_misses_and_corrupt_entries(tmp_path, sleeps):
    with fake_server(lambda n, _: ok(f"reply {n}")) as srv:
        cached = CachedChat(OpenAIChat(srv.base_url, "m"), tmp_path / "cache")
        first = ask(cached)
        assert first.text == "reply 1" and not first.cached
        again = ask(cached)
        assert again == ChatReply("reply 1", 11, 3, first.seconds, cached=True)
        assert len(srv.requests) == 1

        other_seed = ask(cached, seed=1)
        assert other_seed.text == "reply 2" and not other_seed.cached and len(srv.requests) == 2

        key = cached.key(MESSAGES, temperature=0.0, max_tokens=8, seed=0)
        path = cached.path(key)
        assert path == tmp_path / "cache" / key[:2] / f"{key}.json"
        path.write_text('{"request": {"backend": ')  # as if killed mid-write without the atomic rename
        redo = ask(cached)
        assert redo.text == "reply 3" and not redo.cached and len(srv.requests) == 3
        assert json.loads(path.read_text())["reply"]["text"] == "reply 3"  # overwritten with a good entry

        assert cached.stats() == {
            "calls": 3,
            "hits": 1,
            "prompt_tokens": 33,
            "completion_tokens": 9,
            "seconds": pytest.approx(first.seconds + other_seed.seconds + redo.seconds),
        }

        rerun = CachedChat(OpenAIChat(srv.base_url, "m"), tmp_path / "cache")
        assert ask(rerun).text == "reply 3" and ask(rerun, seed=1).text == "reply 2"
        assert len(srv.requests) == 3 and rerun.stats()["calls"] == 0 and rerun.stats()["hits"] == 2

        other_model = CachedChat(OpenAIChat(srv.base_url, "other"), tmp_path / "cache")
        assert ask(other_model).text == "reply 4"  # the backend description is part of the key
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_stores_nothing_on_failure(tmp_path, sleeps):
    with fake_server(lambda n, _: (400, {}, b"no") if n == 1 else ok()) as srv:
        cached = CachedChat(OpenAIChat(srv.base_url, "m"), tmp_path)
        with pytest.raises(ErrwiseError):
            ask(cached)
        assert not ask(cached).cached and cached.stats()["calls"] == 1
    assert len(list(tmp_path.rglob("*.json"))) == 1


# ---- LocalChat ----


def test_local_chat_without_chat_template(tiny):
    model, tok = tiny
    assert not getattr(tok, "chat_template", None)
    chat = LocalChat(model, tok)
    assert chat.description == f"local:{model.name_or_path}"
    reply = chat.chat(MESSAGES, temperature=1.0, max_tokens=6, seed=7)
    assert isinstance(reply.text, str) and reply.prompt_tokens > 0 and 0 < reply.completion_tokens <= 6
    assert chat.chat(MESSAGES, temperature=1.0, max_tokens=6, seed=7).text == reply.text  # seeded sampling
    greedy = chat.chat(MESSAGES, temperature=0.0, max_tokens=6, seed=1)
    assert chat.chat(MESSAGES, temperature=0.0, max_tokens=6, seed=2).text == greedy.text


def test_local_chat_with_chat_template(tiny, tiny_model_dir):
    from errwise.model import load_tokenizer

    model, _ = tiny
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = CHAT_TEMPLATE
    reply = LocalChat(model, tok).chat(MESSAGES, temperature=0.0, max_tokens=4, seed=0)
    expected = len(tok("system: You write data.\nuser: Relation: founded by\nassistant:")["input_ids"])
    assert reply.prompt_tokens == expected and isinstance(reply.text, str)


def test_prefilled_assistant_turn_is_continued(tiny, tiny_model_dir):
    """A started assistant turn (prefill) is continued in-process (the reply includes the prefix); an endpoint
    gets the conversation without it (servers differ in how they continue one)."""
    from errwise.model import load_tokenizer

    prefilled = [*MESSAGES, {"role": "assistant", "content": "Sentence:"}]
    with fake_server(lambda n, _: ok(" Acme was founded by Jane .")) as srv:
        reply = ask_messages(OpenAIChat(srv.base_url, "m"), prefilled)
    assert reply.text == " Acme was founded by Jane ."
    assert srv.requests[0]["json"]["messages"] == MESSAGES

    model, _ = tiny
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = CHAT_TEMPLATE
    local = LocalChat(model, tok).chat(prefilled, temperature=0.0, max_tokens=4, seed=0)
    expected = len(tok("system: You write data.\nuser: Relation: founded by\nassistant: Sentence:")["input_ids"])
    assert local.text.startswith("Sentence:") and local.prompt_tokens <= expected + 1


def ask_messages(chat: ChatBackend, messages) -> ChatReply:
    return chat.chat(messages, temperature=0.0, max_tokens=8, seed=0)


# ---- real OpenAI-compatible servers: `transformers serve` and llama.cpp's ----


def survives_a_restart(srv, chat: OpenAIChat, cached_prefix_same: bool = True) -> None:
    """Answers, fails over a few quick retries with a one-line error naming the URL while the server is down
    (SIGKILL), and answers the same again once it is back. `cached_prefix_same`: a repeated request gets the
    same greedy text (llama.cpp reuses the cached prompt, whose numerics differ slightly from a fresh one)."""
    reply = chat.chat(MESSAGES, temperature=0.0, max_tokens=8, seed=0)
    assert isinstance(reply.text, str) and reply.prompt_tokens > 0 and 0 <= reply.completion_tokens <= 8
    again = chat.chat(MESSAGES, temperature=0.0, max_tokens=8, seed=0)
    assert again.text == reply.text or not cached_prefix_same

    srv.kill()
    with pytest.raises(ErrwiseError, match=r"cannot connect .* after 2 attempts") as info:
        chat.chat(MESSAGES, temperature=0.0, max_tokens=8, seed=0)
    assert srv.base_url in str(info.value) and "\n" not in str(info.value)

    srv.start()
    assert chat.chat(MESSAGES, temperature=0.0, max_tokens=8, seed=0).text == reply.text


def test_real_server_survives_a_restart(instructor_server):
    srv = instructor_server
    chat = OpenAIChat(srv.base_url, srv.model, api_key="", timeout=60, max_retries=1, backoff=0.01)
    with pytest.raises(ErrwiseError, match=r"HTTP 400.*pinned"):  # a 4xx from a real server: no retry
        OpenAIChat(srv.base_url, "not-the-model", api_key="").chat(MESSAGES, temperature=0.0, max_tokens=8, seed=0)
    survives_a_restart(srv, chat)


def test_real_llama_cpp_server_survives_a_restart(llama_server):
    chat = OpenAIChat(llama_server.base_url, llama_server.model, api_key="", timeout=60, max_retries=1, backoff=0.01)
    survives_a_restart(llama_server, chat, cached_prefix_same=False)
