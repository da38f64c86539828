"""HTTP ingest for applications not written in Python: a WSGI app.

    POST /v1/intents   Authorization: Bearer $TAGSYNC_INGEST_TOKEN
                       {"intents": [{"op", "tag_id", "openid", "ts"?, "account"?}, ...]}
        202 {"accepted": n}
        400 {"errors": [{"index", "field", "message"}]}   nothing enqueued
        401 without the right token; 413 over 1 MiB or TAGSYNC_INGEST_MAX_INTENTS intents;
        429 with Retry-After when Redis is down, full (maxmemory) or too slow to answer, or
            replicas did not acknowledge (TAGSYNC_REDIS_WAIT_REPLICAS): nothing is lost by
            sending the same intents again
    GET /healthz       200 {"ok": true} (503 when Redis does not answer)

Production: ``gunicorn producers.wsgi:app``; development: ``tagsync ingest --port P``.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import redis

from producers._queue import NotReplicated, broker, enqueue
from producers.intents import check_all

#: Largest request body accepted, in bytes.
MAX_BODY = 1024 * 1024
#: Most intents in one request unless ``TAGSYNC_INGEST_MAX_INTENTS`` says (a 1 MiB body holds
#: about 10,000 real ones).
MAX_INTENTS = 20_000
#: Seconds a client is asked to wait before sending again when Redis cannot take intents.
RETRY_AFTER_S = 2

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

_STATUS = {
    200: "200 OK",
    403: "403 Forbidden",
    201: "201 Created",
    202: "202 Accepted",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    411: "411 Length Required",
    413: "413 Payload Too Large",
    429: "429 Too Many Requests",
    503: "503 Service Unavailable",
}


def reply(
    start_response: StartResponse, status: int, body: dict[str, Any], *extra: tuple[str, str]
) -> list[bytes]:
    payload = json.dumps(body, ensure_ascii=False).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *extra]
    start_response(_STATUS[status], headers)
    return [payload]


def reply_text(
    start_response: StartResponse, status: int, body: str, *extra: tuple[str, str]
) -> list[bytes]:
    """A plain-text answer (WeChat's pushes expect ``success``, not JSON)."""
    payload = body.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(payload)))]
    start_response(_STATUS[status], [*headers, *extra])
    return [payload]


def busy(start_response: StartResponse, what: str) -> list[bytes]:
    """The 429 answer when Redis cannot take a write now: the client should send again."""
    return reply(
        start_response,
        429,
        {"error": f"{what}; send again in {RETRY_AFTER_S} s"},
        ("Retry-After", str(RETRY_AFTER_S)),
    )


def max_intents() -> int:
    """The most intents one request may carry (``TAGSYNC_INGEST_MAX_INTENTS``)."""
    raw = os.environ.get("TAGSYNC_INGEST_MAX_INTENTS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else MAX_INTENTS


def _error(field: str, message: str, index: int | None = None) -> dict[str, Any]:
    return {"errors": [{"index": index, "field": field, "message": message}]}


def unauthorized(start_response: StartResponse) -> list[bytes]:
    """The 401 answer to a request without the right bearer token."""
    return reply(
        start_response,
        401,
        {"error": "missing or wrong bearer token"},
        ("WWW-Authenticate", "Bearer"),
    )


class BodyError(Exception):
    """A request body that cannot be read as JSON: the status and document to answer."""

    def __init__(self, status: int, document: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.document = status, document


def read_json(environ: dict[str, Any], max_body: int) -> Any:
    """The request's JSON body; ``BodyError`` (411, 413 or 400) when it cannot be had."""
    length_header = environ.get("CONTENT_LENGTH") or ""
    if not length_header.isdigit():
        raise BodyError(411, {"error": "Content-Length required"})
    length = int(length_header)
    if length > max_body:
        raise BodyError(413, {"error": f"body over {max_body} bytes; split the intents"})
    raw = environ["wsgi.input"].read(length)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BodyError(400, _error("body", "not valid JSON")) from None
    except RecursionError:
        raise BodyError(400, _error("body", "JSON nested too deeply")) from None


class IngestApp:
    """The WSGI application; ``token`` defaults to ``TAGSYNC_INGEST_TOKEN`` at each request."""

    def __init__(self, token: str | None = None) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "IngestApp(token=***)"

    def authorized(self, environ: dict[str, Any]) -> bool:
        """Does the request carry the right bearer token (compared in constant time)?"""
        expected = self._token or os.environ.get("TAGSYNC_INGEST_TOKEN") or ""
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = given.partition(" ")
        # Constant-time comparison; with no token configured nobody is let in.
        return (
            bool(expected)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.encode(), expected.encode())
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz":
            return self._health(start_response)
        if path != "/v1/intents":
            return reply(start_response, 404, {"error": "not found"})
        if method != "POST":
            return reply(start_response, 405, {"error": "use POST"}, ("Allow", "POST"))
        if not self.authorized(environ):
            return unauthorized(start_response)
        try:
            document = read_json(environ, MAX_BODY)
        except BodyError as exc:
            return reply(start_response, exc.status, exc.document)
        if not isinstance(document, dict) or not isinstance(document.get("intents"), list):
            return reply(start_response, 400, _error("intents", 'body must be {"intents": [...]}'))
        cap = max_intents()
        if len(document["intents"]) > cap:
            message = f"at most {cap} intents a request; split them"
            return reply(start_response, 413, _error("intents", message))
        intents, errors = check_all(document["intents"])
        if errors:
            details = [{"index": e.index, "field": e.field, "message": e.message} for e in errors]
            return reply(start_response, 400, {"errors": details})
        try:
            accepted = enqueue(intents, source="http")
        except NotReplicated:
            return busy(start_response, "replicas did not acknowledge the intents")
        except (redis.RedisError, OSError):
            return busy(start_response, "the queue cannot take intents now")
        return reply(start_response, 202, {"accepted": accepted})

    def _health(self, start_response: StartResponse) -> list[bytes]:
        try:
            broker().client.ping()
        except Exception as exc:  # the reason, for whoever looks: a wrong URL, a refused login
            return reply(start_response, 503, {"ok": False, "error": f"redis unreachable: {exc}"})
        return reply(start_response, 200, {"ok": True})


#: The app for ``gunicorn producers.wsgi:app``.
app = IngestApp()
