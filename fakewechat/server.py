"""HTTP front of the simulator: ``/cgi-bin/...`` as WeChat serves it, ``/_sim/...`` for tests.

Standard library only: a thread per keep-alive connection lets a "timeout" fault hang one
answer without holding the others.
"""

from __future__ import annotations

import json
import socketserver
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fakewechat import endpoints
from fakewechat.platform import Platform
from fakewechat.simulator import Answer, Simulator, bad_json

#: Largest request body the simulator reads, in bytes.
MAX_BODY = 8 * 1024 * 1024
#: Longest request or header line, in bytes.
MAX_LINE = 65_536
#: Most header lines in one request.
MAX_HEADERS = 100


class SimulatorServer(socketserver.ThreadingTCPServer):
    """A threading HTTP/1.1 server bound to a ``Platform`` (or one ``Simulator``, its one app).

    ``platform`` routes the calls; ``simulator`` is its first app, the one a test endpoint
    without ``appid`` means.
    """

    daemon_threads = True
    allow_reuse_address = True
    # Many clients open many keep-alive connections at once.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], simulator: Simulator | Platform) -> None:
        super().__init__(address, _Handler)
        self.platform = simulator if isinstance(simulator, Platform) else Platform([simulator])
        self.simulator = self.platform.default

    @property
    def url(self) -> str:
        """The base URL clients use as ``WECHAT_API_BASE``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is routine (timeouts); anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(socketserver.StreamRequestHandler):
    """A minimal HTTP/1.1 keep-alive handler.

    ``http.server`` parses headers with the ``email`` package, which costs more than
    everything the simulator does per call; a request here is a request line, a few
    headers and a JSON body, so a small parser keeps the simulator far ahead of its clients.
    """

    # The answer goes out in one write, and Nagle must not hold it back.
    disable_nagle_algorithm = True
    server: SimulatorServer

    def handle(self) -> None:
        while True:
            try:
                keep_alive = self._one_request()
            except _BadRequest as exc:
                self._send(
                    exc.status, {"errcode": exc.status, "errmsg": str(exc)}, keep_alive=False
                )
                return
            except (ConnectionError, TimeoutError):
                return
            if not keep_alive:
                return

    def _one_request(self) -> bool:
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        if len(line) > MAX_LINE:
            raise _BadRequest(414, "request line too long")
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            raise _BadRequest(400, "bad request line") from None
        length = 0
        keep_alive = version == "HTTP/1.1"
        for _ in range(MAX_HEADERS):
            header = self.rfile.readline(MAX_LINE + 1)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                if not value.strip().isdigit():
                    raise _BadRequest(400, "bad content-length")
                length = int(value)
            elif name == "connection":
                keep_alive = value.strip().lower() != "close" and (
                    version == "HTTP/1.1" or value.strip().lower() == "keep-alive"
                )
            elif name == "transfer-encoding":
                raise _BadRequest(411, "chunked bodies are not supported; send Content-Length")
        else:
            raise _BadRequest(431, "too many headers")
        if length > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        raw = self.rfile.read(length) if length else b""
        self._dispatch(method, target, _parse_json(raw), keep_alive)
        return keep_alive

    def _send(self, status: int, body: dict[str, Any], *, keep_alive: bool = True) -> None:
        payload = json.dumps(body, ensure_ascii=False).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + payload)

    def _send_raw(self, status: int, text: str, content_type: str, *, keep_alive: bool) -> None:
        payload = text.encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + payload)

    def _dispatch(self, method: str, target: str, body: Any, keep_alive: bool) -> None:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        platform = self.server.platform
        if parts.path.startswith("/cgi-bin/"):
            answer = platform.call(parts.path.removeprefix("/cgi-bin/"), method, query, body)
            self._answer(answer, keep_alive)
        elif parts.path.startswith("/_sim/"):
            status, doc = endpoints.answer(platform, method, parts.path, query, body)
            self._send(status, doc, keep_alive=keep_alive)
        else:
            self._send(404, {"errcode": 404, "errmsg": "not found"}, keep_alive=keep_alive)

    def _answer(self, answer: Answer, keep_alive: bool) -> None:
        try:
            if answer.delay_s:
                time.sleep(answer.delay_s)
        finally:
            self.server.platform.done(answer)
        if answer.hang_s:
            # The answer never arrives within the client's read timeout.
            time.sleep(answer.hang_s)
            raise ConnectionAbortedError
        if answer.reset:
            # The call was carried out; the connection drops before the answer.
            raise ConnectionResetError
        if answer.raw is not None:
            self._send_raw(answer.status, answer.raw, answer.content_type, keep_alive=keep_alive)
            return
        self._send(answer.status, answer.body, keep_alive=keep_alive)


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return bad_json()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    411: "Length Required",
    413: "Payload Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


def serve_in_thread(
    simulator: Simulator | Platform, host: str = "127.0.0.1", port: int = 0
) -> SimulatorServer:
    """Start a server of one app or a platform on a daemon thread (port 0: a free port)."""
    server = SimulatorServer((host, port), simulator)
    thread = threading.Thread(target=server.serve_forever, name="fakewechat", daemon=True)
    thread.start()
    return server
