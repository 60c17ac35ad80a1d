"""The labelling app's checks of a request: its origin, its JSON body and the fields of a label or of
online feedback. Each refusal is an :class:`HttpError` with the status and the reason the client sees."""

from __future__ import annotations

import json
import math
import socket
from typing import Optional

from starlette.requests import Request

from rlhf_lab.labelling.addresses import public_origin
from rlhf_lab.labelling.store import Item

MAX_BODY_BYTES = 16 * 1024
MAX_REASON_CHARS = 2000
MAX_ONLINE_TEXT_CHARS = 20_000


class HttpError(Exception):
    """An answer other than 200, with the reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _is_integer(value) -> bool:
    # JSON true and false arrive as bools, which Python counts as ints.
    return isinstance(value, int) and not isinstance(value, bool)


def is_item_id(value) -> bool:
    # SQLite's integers are 64-bit: a larger id would be a 500, not a 404.
    return _is_integer(value) and 0 <= value < 2**63


MAX_SECONDS = 7 * 24 * 3600.0
"""The longest time a label may say it took (a week: anything longer is a broken client)."""


def refuse_foreign_origin(request: Request, origins: frozenset[str]) -> Optional[str]:
    """The reason to refuse a request that is not a GET and comes from an origin the app is not served
    at, else None. Compared with the addresses the server knows it has (and the configured public
    one), never with the request's own Host header, which the sender writes."""
    origin = request.headers.get("origin")
    if request.method != "GET" and origin is not None and origin.rstrip("/") not in origins:
        return f"requests from origin {origin} are refused (this app is served at {', '.join(sorted(origins))})"
    return None


def served_origins(host: str, port: int, public_url: Optional[str] = None) -> frozenset[str]:
    """The origins a page of this app has when served on ``host:port``: that address, and for a
    loopback or every-interface address the machine's names and addresses; plus ``public_url`` (a
    proxy's address, or a name only the labellers' network knows)."""
    names = {host}
    if host in ("0.0.0.0", "::", ""):
        names |= {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
        except socket.gaierror:
            pass
    elif host in ("127.0.0.1", "localhost", "::1"):
        names |= {"localhost", "127.0.0.1", "::1"}
    suffix = "" if port == 80 else f":{port}"  # a browser leaves a scheme's default port out of Origin
    origins = {f"http://[{name}]{suffix}" if ":" in name else f"http://{name}{suffix}" for name in names if name}
    if public_url:
        origins.add(public_origin(public_url, "public_url"))
    return frozenset(origins)


async def read_json_object(request: Request) -> dict:
    """The request's JSON object body, refused if it is not JSON, too large, or not an object."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HttpError(415, "the body must be JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HttpError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    raw = b""
    # A chunked body declares no length: count what arrives, and stop reading at the limit.
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


def reject_unknown_fields(body: dict, allowed: set[str], *, list_allowed: bool = False) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        hint = f"; allowed: {sorted(allowed)}" if list_allowed else ""
        raise HttpError(422, f"unknown field(s) {unknown}{hint}")


def _check_rating(rating) -> None:
    if rating is not None and not (_is_integer(rating) and 1 <= rating <= 7):
        raise HttpError(422, "'rating' must be an integer from 1 to 7")


def check_answer(ranking, tie, skip, k: int) -> None:
    """A label answers with exactly one of a ranking of all k responses, a tie (of two), or a skip."""
    if not isinstance(tie, bool) or not isinstance(skip, bool):
        raise HttpError(422, "'tie' and 'skip' must be true or false")
    if (ranking is not None) + tie + skip != 1:
        raise HttpError(422, "give exactly one of 'ranking', 'tie': true, 'skip': true")
    if ranking is not None and not (isinstance(ranking, list) and all(map(_is_integer, ranking)) and sorted(ranking) == list(range(k))):
        raise HttpError(422, f"'ranking' must list the response indices 0..{k - 1} once each, best first")
    if tie and k != 2:
        raise HttpError(422, "a tie is only for items with two responses")


def check_label_extras(rating, reason, seconds) -> None:
    """The optional parts of a label: a 1-7 rating, a bounded reason, the seconds spent."""
    _check_rating(rating)
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise HttpError(422, f"'reason' must be text of at most {MAX_REASON_CHARS} characters")
    number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    # compared as given: a JSON integer too large for a float must not reach float()
    if seconds is not None and not (number and 0 <= seconds <= MAX_SECONDS and not (isinstance(seconds, float) and math.isnan(seconds))):
        raise HttpError(422, f"'seconds' must be a number from 0 to {MAX_SECONDS:.0f} (a week)")


def check_online_feedback(item: Item, thumb, rating, choice) -> None:
    """Online feedback is one of a thumb or a rating (of a single response) or a choice (between two)."""
    if (thumb is not None) + (rating is not None) + (choice is not None) != 1:
        raise HttpError(422, "give exactly one of 'thumb' (1 or -1), 'rating' (1-7), 'choice' (0 or 1)")
    if thumb is not None and (isinstance(thumb, bool) or thumb not in (1, -1)):
        raise HttpError(422, "'thumb' must be 1 (up) or -1 (down)")
    _check_rating(rating)
    if choice is not None and (len(item.responses) != 2 or isinstance(choice, bool) or choice not in (0, 1)):
        raise HttpError(422, "'choice' (0 or 1) needs an item logged with two responses")
    if (thumb is not None or rating is not None) and len(item.responses) != 1:
        raise HttpError(422, "'thumb' and 'rating' need an item logged with one response")
