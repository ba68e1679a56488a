"""`errwise serve`: an HTTP API (FastAPI, the `serve` extra) and a review page over an extractor, learning from
users' corrections beside serving. See docs/serve.md; `service.py` is the logic, `store.py` the serving folder,
`app.py` the HTTP layer, `static/index.html` the page."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from errwise.errors import ErrwiseError


def serve(
    source: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    state: str | Path | None = None,
    **options,
) -> None:
    """Load SOURCE's served version once and answer HTTP on host:port until stopped (Ctrl-C, SIGTERM)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ErrwiseError("errwise serve needs FastAPI and uvicorn: pip install 'errwise[serve]'") from None
    from errwise.serve.app import create_app
    from errwise.serve.service import open_service

    if token is not None and not token.strip():
        raise ErrwiseError("--token must not be empty; leave it out to have one generated")
    service = open_service(source, state, **options)
    app = create_app(service, token or (generated := secrets.token_urlsafe(24)))
    version, ext = service.serving
    url = f"http://{host}:{port}/"
    print(f"errwise serve: {source} as version {version} ({len(ext.relations)} relations), state {service.store.root}")
    print(f"review page: {url}   API docs: {url}docs")
    if token is None:
        print(f"token (for writes: Authorization: Bearer <token>): {generated}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: {host} is reachable from other machines: anyone there can predict and read the corrections, "
              "and the token travels in clear text (no TLS); put a TLS proxy in front")  # fmt: skip
    sys.stdout.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning")
