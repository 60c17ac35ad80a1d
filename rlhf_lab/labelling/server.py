"""The labelling web app: a Starlette application over a :class:`LabelStore`, served by uvicorn.

Authentication is a bearer token per labeller in the ``Authorization`` header. The page takes its token
from the URL fragment (``/#token=...``, never sent to the server or written to logs) and keeps it in
session storage. Because no cookie authenticates anything, a page of another origin cannot make a
labeller's browser act for them (no CSRF); requests that carry a foreign ``Origin`` are refused as well,
and writes must be JSON. Pages are static files with a strict Content-Security-Policy and render every
text with ``textContent``, so response text containing HTML or script is shown, never run.

Endpoints (JSON unless said otherwise):

=========================================  =====================  ==============================================
``GET /``, ``GET /status``                 anyone                 the labelling page, the status page (HTML)
``GET /api/me``                            any token              name, role, labels given, items left
``GET /api/next``                          crowd, expert          the next item, responses in a shuffled order
``POST /api/labels``                       crowd, expert          a ranking / tie / skip, rating, reason, seconds
``GET /api/status``                        admin                  progress and quality figures
``GET /api/export``                        admin                  aggregated preference records
``POST /api/labellers/{name}/exclude``     admin                  exclude a labeller (or include again)
``POST /api/online/responses``             app                    log a (prompt, response[s]) of a deployment
``POST /api/online/feedback``              app                    thumb, rating or choice on a logged item
=========================================  =====================  ==============================================
"""

from __future__ import annotations

import json
import math
import random
import socket
import threading
from importlib import resources
from typing import Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rlhf_lab.labelling.campaign import Campaign
from rlhf_lab.labelling.store import DuplicateLabel, Label, Labeller

MAX_BODY_BYTES = 16 * 1024
MAX_REASON_CHARS = 2000
MAX_ONLINE_TEXT_CHARS = 20_000

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

STATIC = {"label.js": "text/javascript", "status.js": "text/javascript", "style.css": "text/css"}
PAGES = {"/": "label.html", "/status": "status.html"}


class HttpError(Exception):
    """An answer other than 200, with the reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _static(name: str) -> bytes:
    return resources.files("rlhf_lab.labelling").joinpath("static", name).read_bytes()


def display_order(labeller_id: int, item_id: int, k: int) -> list[int]:
    """The order a labeller sees an item's responses in: shuffled, the same on every reload."""
    order = list(range(k))
    random.Random(labeller_id * 1_000_003 + item_id).shuffle(order)
    return order


def create_app(campaign: Campaign) -> Starlette:
    """The web application of one campaign."""
    store = campaign.store

    def authenticate(request: Request, *roles: str) -> Labeller:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        labeller = store.labeller_for_token(token) if token else None
        if labeller is None or labeller.campaign != campaign.name:
            raise HttpError(401, "a valid token is required (Authorization: Bearer <token>)")
        if roles and labeller.role not in roles:
            raise HttpError(403, f"role '{labeller.role}' may not do this")
        return labeller

    async def read_body(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HttpError(415, "the body must be JSON (Content-Type: application/json)")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            raise HttpError(413, f"the body is over {MAX_BODY_BYTES} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise HttpError(413, f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HttpError(422, "the body must be a JSON object")
        return body

    def endpoint(handler):
        # Handlers are plain functions run on the thread pool: SQLite's commits (fsync) never block the event loop.
        async def wrapped(request: Request) -> Response:
            origin = request.headers.get("origin")
            if request.method != "GET" and origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
                return _json({"error": f"requests from origin {origin} are refused"}, 403)
            try:
                authenticate(request)  # before the body is read: without a token nothing is parsed or stored
                body = await read_body(request) if request.method == "POST" else None
                result = await run_in_threadpool(handler, request, body)
            except HttpError as error:
                headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
                return _json({"error": error.reason}, error.status, headers)
            return result if isinstance(result, Response) else _json(result)

        return wrapped

    async def page(request: Request) -> Response:
        return Response(_static(PAGES[request.url.path]), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _json({"error": "not found"}, 404)
        return Response(_static(name), media_type=STATIC[name] + "; charset=utf-8", headers=SECURITY_HEADERS)

    def me(request: Request, body: Optional[dict]):
        labeller = authenticate(request)
        return {"name": labeller.name, "role": labeller.role, "campaign": campaign.name, **campaign.progress_of(labeller)}

    def next_item(request: Request, body: Optional[dict]):
        labeller = authenticate(request, "crowd", "expert")
        item = campaign.next_item(labeller)
        progress = campaign.progress_of(labeller)
        if item is None:
            return {"item": None, **progress}
        order = display_order(labeller.id, item.id, len(item.responses))
        shown = [{"index": i, "text": item.responses[i]} for i in order]
        return {"item": {"id": item.id, "prompt": item.prompt, "responses": shown, "rating": campaign.settings.ask_rating}, **progress}

    def submit(request: Request, body: Optional[dict]):
        labeller = authenticate(request, "crowd", "expert")
        label = parse_label(body, labeller)
        try:
            new = campaign.submit(labeller, label)
        except DuplicateLabel as error:
            raise HttpError(409, str(error)) from None
        return {"saved": True, "duplicate": not new}

    def parse_label(body: dict, labeller: Labeller) -> Label:
        allowed = {"item_id", "ranking", "tie", "skip", "rating", "reason", "seconds"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise HttpError(422, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        item_id = body.get("item_id")
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            raise HttpError(422, "'item_id' must be an integer")
        item = store.item(item_id)
        if item is None or item.campaign != campaign.name or item.source != "campaign":
            raise HttpError(404, f"no item {item_id} in this campaign")
        k = len(item.responses)
        ranking, tie, skip = body.get("ranking"), body.get("tie", False), body.get("skip", False)
        if not isinstance(tie, bool) or not isinstance(skip, bool):
            raise HttpError(422, "'tie' and 'skip' must be true or false")
        if (ranking is not None) + tie + skip != 1:
            raise HttpError(422, "give exactly one of 'ranking', 'tie': true, 'skip': true")
        if ranking is not None and (
            not isinstance(ranking, list) or any(not isinstance(r, int) or isinstance(r, bool) for r in ranking) or sorted(ranking) != list(range(k))
        ):
            raise HttpError(422, f"'ranking' must list the response indices 0..{k - 1} once each, best first")
        if tie and k != 2:
            raise HttpError(422, "a tie is only for items with two responses")
        rating = body.get("rating")
        if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 7):
            raise HttpError(422, "'rating' must be an integer from 1 to 7")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
            raise HttpError(422, f"'reason' must be text of at most {MAX_REASON_CHARS} characters")
        seconds = body.get("seconds")
        if seconds is not None and (
            not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0
        ):
            raise HttpError(422, "'seconds' must be a non-negative number")
        return Label(item_id, labeller.id, ranking=ranking, tie=tie, skip=skip, rating=rating, reason=reason or None,
                     seconds=float(seconds) if seconds is not None else None)

    def status(request: Request, body: Optional[dict]):
        authenticate(request, "admin")
        return campaign.status()

    def export(request: Request, body: Optional[dict]):
        authenticate(request, "admin")
        method = request.query_params.get("method", campaign.settings.aggregation)
        exclude_flagged = request.query_params.get("exclude_flagged", str(campaign.settings.exclude_flagged)).lower() in ("1", "true", "yes")
        try:
            result = campaign.export(batch=request.query_params.get("batch"), method=method, exclude_flagged=exclude_flagged)
        except ValueError as error:
            raise HttpError(422, str(error)) from None
        from dataclasses import asdict

        return {"records": [asdict(r) for r in result.records], "unresolved": result.unresolved, "by_expert": result.by_expert}

    def exclude(request: Request, body: Optional[dict]):
        authenticate(request, "admin")
        name = request.path_params["name"]
        if store.labeller(campaign.name, name) is None:
            raise HttpError(404, f"no labeller '{name}'")
        excluded = body.get("excluded", True)
        if not isinstance(excluded, bool):
            raise HttpError(422, "'excluded' must be true or false")
        store.set_excluded(campaign.name, name, excluded)
        return {"name": name, "excluded": excluded}

    def online_response(request: Request, body: Optional[dict]):
        authenticate(request, "app")
        prompt, responses = body.get("prompt"), body.get("responses")
        if set(body) - {"prompt", "responses", "key"}:
            raise HttpError(422, f"unknown field(s) {sorted(set(body) - {'prompt', 'responses', 'key'})}")
        if not isinstance(prompt, str) or not isinstance(responses, list) or not 1 <= len(responses) <= 2 or not all(isinstance(r, str) for r in responses):
            raise HttpError(422, "'prompt' must be text and 'responses' a list of one or two texts")
        if len(prompt) + sum(map(len, responses)) > MAX_ONLINE_TEXT_CHARS:
            raise HttpError(422, f"prompt and responses are over {MAX_ONLINE_TEXT_CHARS} characters")
        key = body.get("key")
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
            raise HttpError(422, "'key' must be text of 1 to 128 characters")
        (item_id,) = store.add_items(campaign.name, "online", [{"prompt": prompt, "responses": responses, "key": key and f"online:{key}"}], source="online")
        return {"item_id": item_id}

    def online_feedback(request: Request, body: Optional[dict]):
        labeller = authenticate(request, "app")
        if set(body) - {"item_id", "thumb", "rating", "choice"}:
            raise HttpError(422, f"unknown field(s) {sorted(set(body) - {'item_id', 'thumb', 'rating', 'choice'})}")
        item = store.item(body.get("item_id")) if isinstance(body.get("item_id"), int) else None
        if item is None or item.campaign != campaign.name or item.source != "online":
            raise HttpError(404, "no logged response with this 'item_id'")
        thumb, rating, choice = body.get("thumb"), body.get("rating"), body.get("choice")
        if (thumb is not None) + (rating is not None) + (choice is not None) != 1:
            raise HttpError(422, "give exactly one of 'thumb' (1 or -1), 'rating' (1-7), 'choice' (0 or 1)")
        if thumb is not None and thumb not in (1, -1) or isinstance(thumb, bool):
            raise HttpError(422, "'thumb' must be 1 (up) or -1 (down)")
        if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 7):
            raise HttpError(422, "'rating' must be an integer from 1 to 7")
        if choice is not None and (len(item.responses) != 2 or choice not in (0, 1) or isinstance(choice, bool)):
            raise HttpError(422, "'choice' (0 or 1) needs an item logged with two responses")
        if (thumb is not None or rating is not None) and len(item.responses) != 1:
            raise HttpError(422, "'thumb' and 'rating' need an item logged with one response")
        label = Label(item.id, labeller.id, ranking=[choice, 1 - choice] if choice is not None else None, rating=rating, thumb=thumb)
        try:
            new = store.submit(labeller, label)
        except DuplicateLabel as error:
            raise HttpError(409, str(error)) from None
        return {"saved": True, "duplicate": not new}

    routes = [
        Route("/", page),
        Route("/status", page),
        Route("/static/{name}", static),
        Route("/api/me", endpoint(me)),
        Route("/api/next", endpoint(next_item)),
        Route("/api/labels", endpoint(submit), methods=["POST"]),
        Route("/api/status", endpoint(status)),
        Route("/api/export", endpoint(export)),
        Route("/api/labellers/{name}/exclude", endpoint(exclude), methods=["POST"]),
        Route("/api/online/responses", endpoint(online_response), methods=["POST"]),
        Route("/api/online/feedback", endpoint(online_feedback), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _json(payload, status: int = 200, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


class LabelServer:
    """The app served by uvicorn on a background thread (the feedback source waits while people label)."""

    def __init__(self, campaign: Campaign, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it a keep-alive
        # response written in two parts waits ~40 ms for the client's delayed ACK (Nagle).
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(create_app(campaign), log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="rlhf_lab-label-server")

    @property
    def url(self) -> str:
        """Base URL of the app."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "LabelServer":
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            threading.Event().wait(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> "LabelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
