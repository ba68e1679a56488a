"""Chat backends for the instructor LLM: any OpenAI-compatible endpoint, an in-process model, and a disk cache.

A backend turns chat messages into a `ChatReply`. `OpenAIChat` talks to vLLM, the llama.cpp server,
`transformers serve` or OpenAI itself over plain HTTP (stdlib only), retrying transient failures; `LocalChat`
generates with an already-loaded transformers model; `CachedChat` wraps either so that a rerun with the same
requests costs nothing and returns the same text. The API key never appears in a description, repr or message.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from errwise.errors import ErrwiseError

API_KEY_ENVS = ("ERRWISE_INSTRUCTOR_API_KEY", "OPENAI_API_KEY")
MAX_SLEEP = 30.0  # seconds; caps both exponential backoff and a server's Retry-After


@dataclass(frozen=True)
class ChatReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall time of the call, retries and backoff included
    cached: bool = False


class ChatBackend(Protocol):
    description: str  # names the endpoint and model, never a secret; part of the cache key

    def chat(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int) -> ChatReply: ...


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # a seam for tests


class _Retry(Exception):
    """A transient failure: worth another attempt after `retry_after` seconds (None: exponential backoff)."""

    def __init__(self, reason: str, retry_after: float | None = None, malformed: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.malformed = malformed


def _redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class OpenAIChat:
    """POST `{base_url}/chat/completions` (non-streaming) on any OpenAI-compatible server.

    HTTP 429, 5xx, timeouts, connection errors and malformed replies are retried `max_retries` times, sleeping
    `backoff * 2**attempt` seconds (or the server's Retry-After), at most 30 s each; other 4xx fail at once.
    `api_key` defaults to $ERRWISE_INSTRUCTOR_API_KEY, then $OPENAI_API_KEY; without one no Authorization
    header is sent (local servers need none).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ErrwiseError(
                f"instructor base URL {_redact_url(base_url)!r} is not an http(s) URL; "
                "pass one like http://127.0.0.1:8000/v1"
            )
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ErrwiseError(
                f"instructor timeout={timeout}, max_retries={max_retries}, backoff={backoff}: "
                "the timeout must be > 0 and the others >= 0"
            )
        if api_key is None:
            api_key = next((os.environ[k] for k in API_KEY_ENVS if os.environ.get(k)), None)
        api_key = (api_key or "").strip() or None
        if api_key is not None and not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
            # http.client would echo the bad header value in its exception; say which setting instead.
            raise ErrwiseError(
                "the instructor API key contains spaces or non-ASCII characters; "
                f"check the key passed or ${' / $'.join(API_KEY_ENVS)}"
            )
        self._url = base_url.rstrip("/") + "/chat/completions"
        host = urllib.parse.urlsplit(base_url).hostname or ""
        # A local server is never behind the $http_proxy that a remote one may need.
        loopback = host == "localhost" or host == "::1" or host.startswith("127.")
        self._opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))
        self._api_key = api_key
        self.base_url = _redact_url(base_url.rstrip("/"))
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.description = f"openai:{self.base_url} model={model}"

    def __repr__(self) -> str:
        return f"OpenAIChat({self.description})"

    def chat(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int) -> ChatReply:
        if _prefill(messages):
            # A started assistant turn (prefill) is for small in-process models; servers differ in how (and
            # whether) they continue one, and a capable served model follows the described format anyway.
            messages = messages[:-1]
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "stream": False,
        }
        data = json.dumps(body).encode("utf-8")
        start = time.perf_counter()
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                text, prompt_tokens, completion_tokens = self._attempt(data)
            except _Retry as e:
                last = e
                if attempt + 1 < attempts:
                    wait = e.retry_after if e.retry_after is not None else self.backoff * 2**attempt
                    _sleep(min(wait, MAX_SLEEP))
                continue
            return ChatReply(text, prompt_tokens, completion_tokens, time.perf_counter() - start)
        fix = (
            "check that the base URL points at an OpenAI-compatible /v1 endpoint"
            if last.malformed
            else "check that the server is running (base URL, model) or raise instructor.timeout"
        )
        plural = "s" if attempts > 1 else ""
        raise ErrwiseError(
            f"instructor endpoint {self.base_url}: {last.reason} after {attempts} attempt{plural}; {fix}"
        )

    def _attempt(self, data: bytes) -> tuple[str, int, int]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self._url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            status = f"HTTP {e.code}" + (f" {e.reason}" if e.reason else "")
            if e.code == 429 or e.code >= 500:
                raise _Retry(status, _retry_after(e.headers.get("Retry-After") if e.headers else None)) from None
            raise ErrwiseError(
                f"instructor endpoint {self.base_url}: {status}: {self._snippet(e)}; {_client_error_fix(e.code)}"
            ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _Retry(f"no answer within {self.timeout:g} s") from None
            raise _Retry(f"cannot connect ({e.reason})") from None
        except TimeoutError:
            raise _Retry(f"no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(f"connection failed ({type(e).__name__}: {e})") from None
        return _parse_reply(raw)

    def _snippet(self, e: urllib.error.HTTPError) -> str:
        """At most 200 characters of an error body, on one line, with the API key masked should it be echoed."""
        try:
            text = e.read().decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException):
            text = ""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return " ".join(text.split())[:200] or "(empty body)"


def _client_error_fix(code: int) -> str:
    if code in (401, 403):
        return f"check the API key (${' or $'.join(API_KEY_ENVS)})"
    if code == 404:
        return "check the base URL (it usually ends in /v1) and the model name"
    return "check the model name and the request parameters"


def _parse_reply(raw: bytes) -> tuple[str, int, int]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Retry("malformed response (not JSON)", malformed=True) from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Retry("malformed response (no choices[0].message.content)", malformed=True) from None
    if not isinstance(content, str):
        raise _Retry("malformed response (choices[0].message.content is not a string)", malformed=True)
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    return content, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


class LocalChat:
    """Generate in-process with an already-loaded transformers causal LM and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.description = f"local:{getattr(model, 'name_or_path', '') or type(model).__name__}"

    def __repr__(self) -> str:
        return f"LocalChat({self.description})"

    def chat(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int) -> ChatReply:
        import torch

        start = time.perf_counter()
        device = getattr(self.model, "device", None) or next(self.model.parameters()).device
        encoded = self._encode(messages)
        input_ids = encoded["input_ids"].to(device)
        attention_mask = encoded.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tok = self.tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": temperature > 0,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        }
        if temperature > 0:
            kwargs["temperature"] = temperature
        torch.manual_seed(seed)
        with torch.no_grad():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask.to(device), **kwargs)
        new = output[0, input_ids.shape[1] :]
        text = _prefill(messages) + tok.decode(new, skip_special_tokens=True)
        return ChatReply(text, int(input_ids.shape[1]), int(new.shape[0]), time.perf_counter() - start)

    def _encode(self, messages: list[dict[str, str]]) -> Any:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            started = bool(_prefill(messages))
            encoded = tok.apply_chat_template(
                messages,
                add_generation_prompt=not started,
                continue_final_message=started,
                return_tensors="pt",
                return_dict=True,
            )
            return {"input_ids": encoded} if isinstance(encoded, torch.Tensor) else encoded
        # No chat template (base models, test models): plain "role: content" lines, then the assistant's turn.
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        text += "" if _prefill(messages) else "\nassistant:"
        return tok(text, return_tensors="pt")


class CachedChat:
    """A `ChatBackend` that answers repeated requests from `cache_dir`, one JSON file per request.

    The key hashes the backend's description, the messages, temperature, max_tokens and seed. Entries are
    written atomically (temp file + os.replace); an unreadable entry counts as a miss and is rewritten.
    Hits return the stored reply with `cached=True`. `calls`, `prompt_tokens`, `completion_tokens` and
    `seconds` count real backend calls only; `hits` counts answers from the cache.
    """

    def __init__(self, backend: ChatBackend, cache_dir: Path):
        self.backend = backend
        self.cache_dir = Path(cache_dir)
        self.description = backend.description
        self.calls = 0
        self.hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.seconds = 0.0
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ErrwiseError(
                f"cannot create the instructor cache folder {self.cache_dir} ({e.strerror or e}); "
                "pass a writable folder"
            ) from None

    def __repr__(self) -> str:
        return f"CachedChat({self.description}, {self.cache_dir})"

    def key(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int) -> str:
        return hashlib.sha256(_canonical(self._request(messages, temperature, max_tokens, seed)).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def chat(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int) -> ChatReply:
        request = self._request(messages, temperature, max_tokens, seed)
        path = self.path(hashlib.sha256(_canonical(request).encode()).hexdigest())
        reply = _read_entry(path, request)
        if reply is not None:
            self.hits += 1
            return reply
        reply = self.backend.chat(messages, temperature=temperature, max_tokens=max_tokens, seed=seed)
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.seconds += reply.seconds
        _write_entry(path, request, reply)
        return reply

    def stats(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "hits": self.hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": self.seconds,
        }

    def cost_since(self, before: dict[str, float]) -> dict[str, float]:
        """What was spent since `before` (an earlier `stats()`)."""
        return {k: v - before[k] for k, v in self.stats().items()}

    def _request(self, messages: list[dict[str, str]], temperature: float, max_tokens: int, seed: int) -> dict:
        return {
            "backend": self.backend.description,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
        }


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _read_entry(path: Path, request: dict) -> ChatReply | None:
    """The stored reply for `request`, or None when absent, unreadable, malformed or for another request."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        reply = entry["reply"]
        if _canonical(entry["request"]) != _canonical(request):
            return None
        text, prompt = reply["text"], reply["prompt_tokens"]
        completion, seconds = reply["completion_tokens"], reply["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(text, str) and isinstance(prompt, int) and isinstance(completion, int)):
        return None
    if not isinstance(seconds, (int, float)):
        return None
    return ChatReply(text, prompt, completion, float(seconds), cached=True)


def _write_entry(path: Path, request: dict, reply: ChatReply) -> None:
    entry = {
        "request": request,
        "reply": {
            "text": reply.text,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "seconds": reply.seconds,
        },
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem[:16] + ".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a reader sees the old entry or the whole new one, never half of it
        tmp = None
    except OSError as e:
        raise ErrwiseError(
            f"cannot write the instructor cache entry {path} ({e.strerror or e}); free disk space or pass a "
            "writable cache folder"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _prefill(messages: list[dict[str, str]]) -> str:
    """The start of the reply when the messages end with a started assistant turn (prefill), else ""."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
