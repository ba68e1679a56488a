"""The HTTP API of `errwise serve` (FastAPI) and its review page, over a `Service`.

Reads (/health, /relations, /predict, /corrections, /jobs/{id}, the page, /docs) are open; writes (POST
/corrections, /learn, /rollback) need `Authorization: Bearer <token>`. Every error is one line of JSON,
`{"error": "..."}`: 400 bad input, 401 no or wrong token, 404, 409 refused in this state, 413 too large, 415 not
sent as JSON, 422 a body not of the endpoint's schema; never a traceback.
"""

from __future__ import annotations

import hmac
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

import errwise
from errwise.errors import ErrwiseError
from errwise.serve.service import Service

MAX_BODY = 1_000_000  # bytes

EXAMPLE = {"text": "Ada Byron married William King in 1835 .", "head": "Ada Byron", "tail": "William King"}


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Any]] = Field(
        min_length=1,
        description="errwise JSONL records: text + head + tail strings, or tokens + head/tail [start, end]; "
        "optional id; a relation is ignored",
        examples=[[EXAMPLE]],
    )
    top_k: int = Field(3, ge=1, description="relations listed in each answer's `top`")
    min_score: float | None = Field(None, ge=0, le=1, description="answer relation null below this probability")


class CorrectionBody(BaseModel):
    """One record in errwise's JSONL form, `relation` the right answer, plus what the model answered."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{**EXAMPLE, "relation": "spouse",
                                                                                "predicted": "sibling"}]})  # fmt: skip
    text: str | None = None
    tokens: list[str] | None = None
    head: str | list[int]
    tail: str | list[int]
    relation: str = Field(description="the right relation: a learned id, or a new one (it becomes a new relation)")
    predicted: str = Field(description="the relation id the model answered (/predict's `relation`)")
    id: str | None = None


BEARER = HTTPBearer(auto_error=False, description="the token `errwise serve` printed (or its --token)")


def authorized(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """The write endpoints' check: the app's token, compared in constant time."""
    token = request.app.state.token
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <the token errwise serve "
                            "printed>", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class LimitBody:
    """ASGI middleware: a request body over `limit` bytes is refused (413) before the app reads it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error(413, f"request body over {self.limit} bytes; send fewer records per request")
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit():
            return await error(400, "bad Content-Length header")(scope, receive, send)
        if int(length) > self.limit:
            return await too_big(scope, receive, send)
        body, more = b"", True
        while more:  # a body without Content-Length (chunked) is counted as it comes
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_big(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def create_app(service: Service, token: str, *, max_body: int = MAX_BODY) -> FastAPI:
    app = FastAPI(
        title="errwise serve",
        version=errwise.__version__,
        description="Predict relations with an errwise extractor, collect corrections, learn from them. "
        "Writes need `Authorization: Bearer <token>` (printed by `errwise serve`). The review page is at /.",
    )
    app.add_middleware(LimitBody, limit=max_body)
    app.state.token = token

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, e.detail, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        if any(x["type"] == "json_invalid" for x in errs):
            why = errs[0].get("ctx", {}).get("error", "not JSON")
            return error(400, f"malformed JSON: {why}; send one JSON object")
        if "json" not in request.headers.get("content-type", "") and any(x["loc"] == ("body",) for x in errs):
            return error(415, "send the body as JSON, with the header Content-Type: application/json")
        parts = [f"{'.'.join(str(p) for p in x['loc'] if p != 'body') or 'body'}: {x['msg']}" for x in errs[:3]]
        more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
        return error(422, "; ".join(parts) + more)

    @app.exception_handler(ErrwiseError)
    async def refused(request: Request, e: ErrwiseError):
        return error(getattr(e, "status", 400), str(e))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):  # logged with its traceback by the server, not sent
        return error(500, f"internal error: {type(e).__name__}; see the server's log")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((files("errwise.serve") / "static" / "index.html").read_text(encoding="utf-8"))

    @app.get("/health", summary="the version being served")
    def health() -> dict:
        return service.health()

    @app.get("/relations", summary="the learned relations: id, name, description")
    def relations() -> dict:
        return service.relations()

    @app.post("/predict", summary="the relation of each record, as `errwise predict` writes a line")
    def predict(body: PredictBody) -> dict:
        return service.predict(body.records, body.top_k, body.min_score)

    @app.get("/corrections", summary="the correction queue: corrections the served version has not learned")
    def corrections() -> dict:
        return service.corrections()

    @app.post("/corrections", status_code=201, dependencies=[Depends(authorized)], summary="add a correction")
    def correct(body: CorrectionBody) -> dict:
        return service.correct(body.model_dump(exclude_none=True))

    @app.post("/learn", status_code=202, dependencies=[Depends(authorized)], summary="learn the pending corrections")
    def learn() -> JSONResponse:
        job = service.learn()
        return JSONResponse(job, status_code=202, headers={"Location": f"/jobs/{job['id']}"})

    @app.get("/jobs/{job_id}", summary="a learn job: state, progress, result")
    def job(job_id: str) -> dict:
        return service.get_job(job_id)

    @app.post("/rollback", dependencies=[Depends(authorized)], summary="serve the previous version again")
    def rollback() -> dict:
        return service.rollback()

    return app
