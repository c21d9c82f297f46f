"""The HTTP API of serving (CONTRACT.md), a thin FastAPI layer over :mod:`serving.ranking`.

Every error is a 4xx (or, for a bug, 500) JSON object ``{"error": "..."}``: FastAPI's own
``{"detail": ...}`` bodies (validation 422, unknown route 404, wrong method 405) are rewritten by
the exception handlers below. Request bodies are validated by pydantic models with size limits
(``k`` <= 100, <= 1,000 item IDs, IDs of 1-256 characters, <= 32 context entries) and bodies over
``MAX_BODY_BYTES`` are refused with 413 before parsing.

With an API key configured, every endpoint except ``/healthz``, ``/metrics``, the OpenAPI
document and those named in ``Serving.open_endpoints`` (``RTREC_OPEN_ENDPOINTS``) requires the
header ``X-API-Key``; the endpoints that return one user's data (``/similar/users``,
``/embeddings/user``, ``/features/user``) can never be opened, and neither can ``"explain": true``
on ``/recommend`` (its ``blocked`` list holds items the user acted on).

Handlers are ``async def``: their CPU work (model, index) runs inline on the event loop, and their
Redis reads are awaited (``redis.asyncio``), so the loop serves other requests while Redis answers;
no thread hand-off per request. Concurrent ``/recommend`` requests are served in batches
(:mod:`serving.batcher`). The sync loop runs in its own thread.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from rtrec.settings import OPENABLE_ENDPOINTS
from serving.impressions import ImpressionLog
from serving.metrics import ServingMetrics
from serving.batcher import Batcher
from serving.ranking import Ask, RecentUsers, Recommendation, Recommender
from serving.sync import SyncLoop

__all__ = ["create_app", "Serving", "MAX_BODY_BYTES", "ENDPOINT_PATHS", "open_path_pattern"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
#: The path of each endpoint by its name in RTREC_OPEN_ENDPOINTS (rtrec.settings says which may be
#: opened); a path segment is what the route's ``{parameter}`` matches.
ENDPOINT_PATHS = {
    "recommend": "/recommend", "score": "/score",
    "similar_items": "/similar/items/[^/]+", "similar_users": "/similar/users/[^/]+",
    "embeddings_item": "/embeddings/item/[^/]+", "embeddings_user": "/embeddings/user/[^/]+",
    "features_item": "/features/item/[^/]+", "features_user": "/features/user/[^/]+",
}

# pydantic parses request bodies from the raw JSON bytes and refuses lone surrogates itself (422).
EntityId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ContextValue = Annotated[str, StringConstraints(max_length=256)] | float | bool
Context = Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], ContextValue],
                    Field(max_length=32)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_id: EntityId
    k: int = Field(10, ge=1, le=100)
    context: Context = Field(default_factory=dict)
    exclude: list[EntityId] = Field(default_factory=list, max_length=1000)
    explain: bool = False  # add an "explain" object to the response (diagnosis; see Explain)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_id: EntityId
    item_ids: list[EntityId] = Field(max_length=1000)
    context: Context = Field(default_factory=dict)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Explain(BaseModel):
    """What one request went through (only with ``"explain": true``): whether it got the cold-start
    list, the named candidates FAISS retrieved (best first), those the ranking head scored (in score
    order, before the rules) and the blocked items (excluded or already acted on)."""

    cold_start: bool
    retrieved: list[str]
    ranked: list[str]
    blocked: list[str]


class RecommendResponse(BaseModel):
    request_id: str
    model_version: int
    items: list[ScoredItem]
    explain: Explain | None = None


class ScoreResponse(BaseModel):
    model_version: int
    scores: list[float]


class Neighbour(BaseModel):
    id: str
    score: float


class EmbeddingResponse(BaseModel):
    id: str
    vector: list[float]
    version: int


class HealthResponse(BaseModel):
    status: str
    model_version: int
    synced_at: float


class ErrorResponse(BaseModel):
    error: str


@dataclass
class Serving:
    """Everything the handlers use; built by :mod:`serving.main` (or a test)."""

    recommender: Recommender
    sync: SyncLoop
    metrics: ServingMetrics
    recent_users: RecentUsers
    impressions: ImpressionLog | None = None
    api_key: str = ""
    open_endpoints: frozenset[str] = frozenset()  # served without the key (names of ENDPOINT_PATHS)


def _json(body: dict) -> Response:
    """A JSON response encoded by orjson, skipping FastAPI's re-validation of what the handler built
    (``response_model`` still documents the shape in the OpenAPI document)."""
    return Response(orjson.dumps(body), media_type="application/json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def open_path_pattern(names: frozenset[str]) -> re.Pattern[str] | None:
    """The paths of the endpoints ``names`` as one pattern (for ``fullmatch``); None for no names.
    Refuses an endpoint that returns user data, whatever the caller validated before.

    >>> open_path_pattern(frozenset({"recommend", "similar_items"})).fullmatch("/similar/items/i1") is not None
    True
    >>> open_path_pattern(frozenset({"features_user"}))
    Traceback (most recent call last):
    ...
    ValueError: endpoints that return user data (or unknown ones) cannot be opened: ['features_user']
    """
    if refused := sorted(names - set(OPENABLE_ENDPOINTS)):
        raise ValueError(f"endpoints that return user data (or unknown ones) cannot be opened: {refused}")
    return re.compile("|".join(ENDPOINT_PATHS[name] for name in sorted(names))) if names else None


class GuardAndTime:
    """ASGI middleware: refuse oversized bodies (413: by Content-Length before routing, and while a
    chunked body is read) and a missing API key (401) except on open paths; time every request and
    count errors by endpoint after. Whether the request carried the key (or none is configured) goes
    to the handlers as ``request.state.trusted``.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs each
    request through an extra task and memory streams, a measurable share of a 1-2 ms request.
    """

    def __init__(self, app: Any, serving: Serving, open_paths: re.Pattern[str] | None) -> None:
        self.app, self.serving, self.metrics = app, serving, serving.metrics
        self.open_paths = open_paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def receive_capped() -> dict:
            """The body as it arrives, refused once over the limit (a chunked body declares no length)."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
            return message

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_and_note)
            else:
                await self.app(scope, receive_capped, send_and_note)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()

    def _refusal(self, scope: dict) -> JSONResponse | None:
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        key = self.serving.api_key
        trusted = not key or hmac.compare_digest(headers.get(b"x-api-key", b""), key.encode())
        scope.setdefault("state", {})["trusted"] = trusted
        path = scope.get("path", "")
        if trusted or path in OPEN_PATHS or (self.open_paths is not None and self.open_paths.fullmatch(path)):
            return None
        return _error(401, "missing or wrong X-API-Key")


def create_app(serving: Serving) -> FastAPI:
    """The FastAPI application over ``serving`` (routes per CONTRACT.md)."""
    open_paths = open_path_pattern(serving.open_endpoints)  # first: a bad list stops start-up
    app = FastAPI(title="rtrec serving", version="1", responses={
        400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
        413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    rec, metrics = serving.recommender, serving.metrics
    batcher: Batcher[Ask, Recommendation] = Batcher(rec.recommend_many_async)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal error")

    app.add_middleware(GuardAndTime, serving=serving, open_paths=open_paths)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok", model_version=serving.sync.model_version,
                              synced_at=serving.sync.synced_at)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest, request: Request) -> Response:
        if body.explain and not request.state.trusted:  # "blocked" lists items the user acted on
            raise HTTPException(401, "explain needs X-API-Key")
        result = await batcher.submit(Ask(body.user_id, body.k, body.context, body.exclude, body.explain))
        request_id = uuid.uuid4().hex
        metrics.recommendations.labels("cold_start" if result.cold_start else "model").inc()
        if result.user_vector is not None:
            serving.recent_users.add(body.user_id, result.user_vector)
        if serving.impressions is not None and result.items:
            names = [name for name, _ in result.items]
            cats = result.categories or rec.catalog.categories(rec.catalog.feature_ids(names))
            serving.impressions.log(request_id, body.user_id, list(zip(names, cats)), body.context)
        out = {"request_id": request_id, "model_version": serving.sync.model_version,
               "items": [{"item_id": n, "score": s} for n, s in result.items]}
        if body.explain:
            out["explain"] = result.explain
        return _json(out)

    @app.post("/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest) -> Response:
        scores = await rec.score_async(body.user_id, body.item_ids, body.context)
        return _json({"model_version": serving.sync.model_version, "scores": [float(s) for s in scores]})

    @app.get("/similar/items/{item_id}")
    async def similar_items(item_id: Annotated[str, Path(min_length=1, max_length=256)],
                            k: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, list[Neighbour]]:
        found = rec.similar_items(item_id, k)
        if found is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        return {"items": [Neighbour(id=n, score=s) for n, s in found]}

    @app.get("/similar/users/{user_id}")
    async def similar_users(user_id: Annotated[str, Path(min_length=1, max_length=256)],
                            k: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, list[Neighbour]]:
        found = rec.similar_users(user_id, k, serving.recent_users)
        if found is None:
            raise HTTPException(404, f"unknown user {user_id!r}")
        return {"users": [Neighbour(id=n, score=s) for n, s in found]}

    @app.get("/embeddings/{kind}/{entity_id}", response_model=EmbeddingResponse)
    async def embedding(kind: Literal["user", "item"],
                        entity_id: Annotated[str, Path(min_length=1, max_length=256)]) -> EmbeddingResponse:
        vector = rec.embedding(kind, entity_id)
        if vector is None:
            raise HTTPException(404, f"unknown {kind} {entity_id!r}")
        return EmbeddingResponse(id=entity_id, vector=vector.tolist(), version=serving.sync.model_version)

    @app.get("/features/{kind}/{entity_id}")
    async def features(kind: Literal["user", "item"],
                       entity_id: Annotated[str, Path(min_length=1, max_length=256)]) -> dict:
        reader = rec.reader
        values = reader.users([entity_id])[0] if kind == "user" else reader.items([entity_id])[0]
        return {"id": entity_id, **values}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
