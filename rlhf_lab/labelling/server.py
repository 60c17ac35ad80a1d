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

import random
import socket
import threading
from dataclasses import asdict
from importlib import resources
from typing import Callable, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rlhf_lab.labelling.campaign import Campaign, NotLeased
from rlhf_lab.labelling.requests import (
    MAX_BODY_BYTES,
    MAX_ONLINE_TEXT_CHARS,
    HttpError,
    check_answer,
    check_label_extras,
    check_online_feedback,
    is_item_id,
    read_json_object,
    refuse_foreign_origin,
    reject_unknown_fields,
    served_origins,
)
from rlhf_lab.labelling.store import DuplicateLabel, Item, Label, Labeller

__all__ = ["MAX_BODY_BYTES", "LabelServer", "create_app", "display_order", "served_origins"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

STATIC = {"label.js": "text/javascript", "status.js": "text/javascript", "style.css": "text/css"}
PAGES = {"/": "label.html", "/status": "status.html"}


def _static(name: str) -> bytes:
    return resources.files("rlhf_lab.labelling").joinpath("static", name).read_bytes()


def _json(payload, status: int = 200, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def display_order(labeller_id: int, item_id: int, k: int) -> list[int]:
    """The order a labeller sees an item's responses in: shuffled, the same on every reload."""
    order = list(range(k))
    random.Random(labeller_id * 1_000_003 + item_id).shuffle(order)
    return order


def _save(submit: Callable[[Labeller, Label], bool], labeller: Labeller, label: Label) -> dict:
    """Store a label through ``submit``; a different earlier answer to the same item is a conflict."""
    try:
        new = submit(labeller, label)
    except DuplicateLabel as error:
        raise HttpError(409, str(error)) from None
    except NotLeased as error:
        raise HttpError(403, str(error)) from None
    return {"saved": True, "duplicate": not new}


# --- the app -----------------------------------------------------------------------------------


async def _page(request: Request) -> Response:
    return Response(_static(PAGES[request.url.path]), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


async def _static_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return _json({"error": "not found"}, 404)
    return Response(_static(name), media_type=STATIC[name] + "; charset=utf-8", headers=SECURITY_HEADERS)


_Handler = Callable[[Request, Labeller, Optional[dict]], dict]

_LABELLER_ROLES = ("crowd", "expert")


class _LabelApp:
    """The API of one campaign: one method per endpoint, each called with the request, the
    authenticated labeller and the JSON body (None for a GET)."""

    def __init__(self, campaign: Campaign, origins: frozenset[str]) -> None:
        self.campaign, self.origins = campaign, origins
        self.store = campaign.store

    def routes(self) -> list[Route]:
        api = [
            ("/api/me", self.me, None, ()),
            ("/api/next", self.next_item, None, _LABELLER_ROLES),
            ("/api/labels", self.submit, ["POST"], _LABELLER_ROLES),
            ("/api/status", self.status, None, ("admin",)),
            ("/api/export", self.export, None, ("admin",)),
            ("/api/labellers/{name}/exclude", self.exclude, ["POST"], ("admin",)),
            ("/api/online/responses", self.online_response, ["POST"], ("app",)),
            ("/api/online/feedback", self.online_feedback, ["POST"], ("app",)),
        ]
        pages = [Route("/", _page), Route("/status", _page), Route("/static/{name}", _static_file)]
        return pages + [Route(path, self._endpoint(handler, roles), methods=methods) for path, handler, methods, roles in api]

    def authenticate(self, request: Request) -> Labeller:
        """The labeller of the request's bearer token; 401 without a valid token of this campaign."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        labeller = self.store.labeller_for_token(token) if token else None
        if labeller is None or labeller.campaign != self.campaign.name:
            raise HttpError(401, "a valid token is required (Authorization: Bearer <token>)")
        return labeller

    def _endpoint(self, handler: _Handler, roles: tuple[str, ...]):
        async def endpoint(request: Request) -> Response:
            refusal = refuse_foreign_origin(request, self.origins)
            if refusal is not None:
                return _json({"error": refusal}, 403)
            try:
                labeller = self.authenticate(request)  # before the body is read: without a token nothing is parsed or stored
                body = await read_json_object(request) if request.method == "POST" else None
                if roles and labeller.role not in roles:
                    raise HttpError(403, f"role '{labeller.role}' may not do this")
                # Handlers run on the thread pool: SQLite's commits (fsync) never block the event loop.
                result = await run_in_threadpool(handler, request, labeller, body)
            except HttpError as error:
                headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
                return _json({"error": error.reason}, error.status, headers)
            return _json(result)

        return endpoint

    def _campaign_item(self, item_id, source: str) -> Optional[Item]:
        item = self.store.item(item_id)
        if item is None or item.campaign != self.campaign.name or item.source != source:
            return None
        return item

    # --- labellers ---

    def me(self, request: Request, labeller: Labeller, body: Optional[dict]) -> dict:
        return {"name": labeller.name, "role": labeller.role, "campaign": self.campaign.name, **self.campaign.progress_of(labeller)}

    def next_item(self, request: Request, labeller: Labeller, body: Optional[dict]) -> dict:
        item = self.campaign.next_item(labeller)
        progress = self.campaign.progress_of(labeller)
        if item is None:
            return {"item": None, **progress}
        order = display_order(labeller.id, item.id, len(item.responses))
        shown = [{"index": index, "text": item.responses[index]} for index in order]
        return {"item": {"id": item.id, "prompt": item.prompt, "responses": shown, "rating": self.campaign.settings.ask_rating}, **progress}

    def submit(self, request: Request, labeller: Labeller, body: dict) -> dict:
        return _save(self.campaign.submit, labeller, self._parse_label(body, labeller))

    def _parse_label(self, body: dict, labeller: Labeller) -> Label:
        reject_unknown_fields(body, {"item_id", "ranking", "tie", "skip", "rating", "reason", "seconds"}, list_allowed=True)
        item_id = body.get("item_id")
        if not is_item_id(item_id):
            raise HttpError(422, "'item_id' must be an item's id (a non-negative integer)")
        item = self._campaign_item(item_id, "campaign")
        if item is None:
            raise HttpError(404, f"no item {item_id} in this campaign")
        ranking, tie, skip = body.get("ranking"), body.get("tie", False), body.get("skip", False)
        check_answer(ranking, tie, skip, len(item.responses))
        rating, reason, seconds = body.get("rating"), body.get("reason"), body.get("seconds")
        check_label_extras(rating, reason, seconds)
        return Label(item_id, labeller.id, ranking=ranking, tie=tie, skip=skip, rating=rating, reason=reason or None,
                     seconds=float(seconds) if seconds is not None else None)

    # --- admins ---

    def status(self, request: Request, labeller: Labeller, body: Optional[dict]) -> dict:
        return self.campaign.status()

    def export(self, request: Request, labeller: Labeller, body: Optional[dict]) -> dict:
        settings = self.campaign.settings
        method = request.query_params.get("method", settings.aggregation)
        exclude_flagged = request.query_params.get("exclude_flagged", str(settings.exclude_flagged)).lower() in ("1", "true", "yes")
        try:
            result = self.campaign.export(batch=request.query_params.get("batch"), method=method, exclude_flagged=exclude_flagged)
        except ValueError as error:
            raise HttpError(422, str(error)) from None
        return {"records": [asdict(record) for record in result.records], "unresolved": result.unresolved, "by_expert": result.by_expert}

    def exclude(self, request: Request, labeller: Labeller, body: dict) -> dict:
        name = request.path_params["name"]
        if self.store.labeller(self.campaign.name, name) is None:
            raise HttpError(404, f"no labeller '{name}'")
        excluded = body.get("excluded", True)
        if not isinstance(excluded, bool):
            raise HttpError(422, "'excluded' must be true or false")
        self.store.set_excluded(self.campaign.name, name, excluded)
        return {"name": name, "excluded": excluded}

    # --- a deployed application ---

    def online_response(self, request: Request, labeller: Labeller, body: dict) -> dict:
        reject_unknown_fields(body, {"prompt", "responses", "key"})
        prompt, responses, key = body.get("prompt"), body.get("responses"), body.get("key")
        responses_are_texts = isinstance(responses, list) and all(isinstance(response, str) for response in responses)
        if not (isinstance(prompt, str) and responses_are_texts and 1 <= len(responses) <= 2):
            raise HttpError(422, "'prompt' must be text and 'responses' a list of one or two texts")
        if len(prompt) + sum(map(len, responses)) > MAX_ONLINE_TEXT_CHARS:
            raise HttpError(422, f"prompt and responses are over {MAX_ONLINE_TEXT_CHARS} characters")
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
            raise HttpError(422, "'key' must be text of 1 to 128 characters")
        # The prefix keeps an application's keys apart from the keys of campaign items.
        logged = {"prompt": prompt, "responses": responses, "key": f"online:{key}" if key is not None else None}
        (item_id,) = self.store.add_items(self.campaign.name, "online", [logged], source="online")
        return {"item_id": item_id}

    def online_feedback(self, request: Request, labeller: Labeller, body: dict) -> dict:
        reject_unknown_fields(body, {"item_id", "thumb", "rating", "choice"})
        item_id = body.get("item_id")
        item = self._campaign_item(item_id, "online") if is_item_id(item_id) else None
        if item is None:
            raise HttpError(404, "no logged response with this 'item_id'")
        thumb, rating, choice = body.get("thumb"), body.get("rating"), body.get("choice")
        check_online_feedback(item, thumb, rating, choice)
        # A choice between two responses is stored as their ranking, the chosen one first.
        ranking = [choice, 1 - choice] if choice is not None else None
        return _save(self.store.submit, labeller, Label(item.id, labeller.id, ranking=ranking, rating=rating, thumb=thumb))


def create_app(campaign: Campaign, origins) -> Starlette:
    """The web application of one campaign, served at ``origins`` (:func:`served_origins`): a write
    from a page of any other origin is refused."""
    return Starlette(routes=_LabelApp(campaign, frozenset(o.rstrip("/") for o in origins)).routes())


class LabelServer:
    """The app served by uvicorn on a background thread (the feedback source waits while people label)."""

    def __init__(self, campaign: Campaign, host: str = "127.0.0.1", port: int = 0, public_url: Optional[str] = None) -> None:
        import uvicorn

        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it a keep-alive
        # response written in two parts waits ~40 ms for the client's delayed ACK (Nagle).
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        app = create_app(campaign, served_origins(host, self.port, public_url))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
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
