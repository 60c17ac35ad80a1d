"""A small HTTP client of the labelling app (standard library only), and the bot labeller built on it.

The bot is a simulated annotator that labels through the same API a browser uses: the whole human path
(items, assignment, storage, aggregation, export) runs end to end without a human.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlsplit

from rlhf_lab.noise import plackett_luce_ranking


class ApiError(Exception):
    """A non-2xx answer of the app."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status, self.reason = status, reason


class LabelClient:
    """One keep-alive connection to the app, authenticated as one labeller."""

    def __init__(self, url: str, token: Optional[str], timeout: float = 300.0) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.token, self.timeout = parts.hostname, parts.port, token, timeout
        self.connection: Optional[http.client.HTTPConnection] = None

    def request(self, method: str, path: str, body=None, headers: Optional[dict] = None, raw: Optional[bytes] = None) -> dict:
        """Send a request and return the JSON answer; raise :class:`ApiError` on a 4xx/5xx."""
        send_headers = {"Accept": "application/json"}
        if self.token is not None:
            send_headers["Authorization"] = f"Bearer {self.token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})
        for attempt in (0, 1):  # a keep-alive connection the server closed is reopened once
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.connection.request(method, path, body=data, headers=send_headers)
                response = self.connection.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = {"error": payload.decode(errors="replace")}
        if response.status >= 400:
            raise ApiError(response.status, answer.get("error", ""))
        return answer

    def next_item(self) -> dict:
        """``GET /api/next``."""
        return self.request("GET", "/api/next")

    def label(self, item_id: int, **answer) -> dict:
        """``POST /api/labels`` with ``ranking=[...]``, ``tie=True`` or ``skip=True`` and optional extras."""
        return self.request("POST", "/api/labels", {"item_id": item_id, **answer})

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class BotLabeller:
    """A simulated annotator labelling through the app: Plackett-Luce choices on a utility, temperature ``beta``.

    Its draws use the same noise model as ``feedback=simulated`` (``noise.py``), so a campaign
    labelled by bots gives records distributed as the simulated source's.
    """

    def __init__(self, client: LabelClient, utility: Callable[[str, str], float], beta: float, seed: int) -> None:
        self.client, self.utility, self.beta = client, utility, beta
        self.rng = random.Random(seed)
        self.labelled = 0

    def answer(self, item: dict) -> dict:
        """The bot's answer to an item as the app shows it."""
        shown = item["responses"]
        utilities = [self.utility(item["prompt"], r["text"]) for r in shown]
        order = plackett_luce_ranking(utilities, self.beta, self.rng)
        return {"ranking": [shown[p]["index"] for p in order], "seconds": 0.0}

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Label until nothing is left (or ``should_stop()``); returns the labels given."""
        while not should_stop():
            item = self.client.next_item()["item"]
            if item is None:
                return self.labelled
            self.client.label(item["id"], **self.answer(item))
            self.labelled += 1
        return self.labelled


@dataclass
class LoadResult:
    """What a load run saw: every acknowledged (labeller, item, ranking), and each request's latency."""

    acknowledged: list[tuple[str, int, list[int]]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def labels_per_second(self) -> float:
        return len(self.acknowledged) / self.seconds if self.seconds else 0.0

    def latency_quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_load(url: str, tokens: dict[str, str], labels_each: int, retry_every: int = 10, stop_on_error: bool = False) -> LoadResult:
    """Every labeller in ``tokens`` labels ``labels_each`` items concurrently (one thread and one
    keep-alive connection each), sending every ``retry_every``-th label twice as a client retry would.
    A label counts as acknowledged only when the app answered 200."""
    result, lock = LoadResult(), threading.Lock()

    def labeller(name: str, token: str) -> None:
        client = LabelClient(url, token, timeout=120)
        try:
            for n in range(labels_each):
                started = time.perf_counter()
                item = client.next_item()["item"]
                if item is None:
                    return
                ranking = [r["index"] for r in item["responses"]]
                client.label(item["id"], ranking=ranking)
                if retry_every and n % retry_every == 0:
                    client.label(item["id"], ranking=ranking)  # a retry: must not count twice
                with lock:
                    result.acknowledged.append((name, item["id"], ranking))
                    result.latencies.append(time.perf_counter() - started)
        except (OSError, ApiError, http.client.HTTPException) as error:
            with lock:
                result.errors.append(f"{name}: {type(error).__name__}: {error}")
        finally:
            client.close()

    threads = [threading.Thread(target=labeller, args=item, daemon=True) for item in tokens.items()]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result
