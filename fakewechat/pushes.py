"""The pushes WeChat sends to a third-party platform's server, and to an account's server.

With ``fakewechat --push-url URL`` the simulator POSTs, as WeChat does:

- to ``URL/component``, sealed with the component's push token and EncodingAESKey (safe
  mode): ``component_verify_ticket`` every ``--ticket-every`` seconds, and ``authorized``
  (with an authorization code for ``component/api_query_auth``), ``updateauthorized`` and
  ``unauthorized`` when ``/_sim/authorize`` and ``/_sim/unauthorize`` are called;
- to ``URL/<appid>``, an account's events (``/_sim/push {"event": "unsubscribe", ...}``):
  sealed with the component's keys for an app that authorized the component, else plain
  (signed with the push token).

The sealing is written here from WeChat's description (the simulator imports nothing of
tagsync's): AES-256-CBC, key = base64(EncodingAESKey + "="), IV = its first 16 bytes,
plaintext = 16 random bytes + 4-byte big-endian length + XML + AppID, PKCS#7 over 32-byte
blocks; signature = SHA1 of token, timestamp, nonce (and Encrypt) sorted and joined.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: The simulator's push token and EncodingAESKey unless told others (demo values).
DEFAULT_PUSH_TOKEN = "fakewechat-push-token"
DEFAULT_PUSH_AES_KEY = "ZmFrZXdlY2hhdC1wdXNoLWtleS0wMTIzNDU2Nzg5YWI"
#: How often WeChat pushes a component_verify_ticket, s.
TICKET_EVERY_S = 600.0


def _sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 (WeChat's)


class Pusher:
    """Seals and POSTs pushes to a server, as WeChat would."""

    def __init__(self, *, url: str, token: str, aes_key: str, component_appid: str | None) -> None:
        key = base64.b64decode(aes_key + "=")
        if len(key) != 32:
            raise ValueError("--push-aes-key must be 43 characters of base64 (32 bytes)")
        self.url = url.rstrip("/")
        self._token = token
        self._key = key
        self.component_appid = component_appid
        #: Pushes sent, by kind (``/_sim/component`` shows them).
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()

    def seal(self, xml: str, appid: str) -> str:
        """``xml`` encrypted for ``appid``, base64."""
        body = xml.encode()
        plain = secrets.token_bytes(16) + struct.pack(">I", len(body)) + body + appid.encode()
        padding = 32 - len(plain) % 32
        plain += bytes([padding]) * padding
        encryptor = Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16])).encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def post(self, path: str, xml: str, *, sealed_for: str | None, kind: str) -> dict[str, Any]:
        """POST one push to ``URL/path``; what the server answered."""
        timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
        if sealed_for is not None:
            encrypted = self.seal(xml, sealed_for)
            query = {
                "timestamp": timestamp,
                "nonce": nonce,
                "encrypt_type": "aes",
                "msg_signature": _sign(self._token, timestamp, nonce, encrypted),
            }
            body = f"<xml><ToUserName><![CDATA[{sealed_for}]]></ToUserName>"
            body += f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        else:
            query = {
                "timestamp": timestamp,
                "nonce": nonce,
                "signature": _sign(self._token, timestamp, nonce),
            }
            body = xml
        url = f"{self.url}/{path}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(  # noqa: S310 (the URL the operator gave)
            url, data=body.encode(), method="POST", headers={"Content-Type": "text/xml"}
        )
        with self._lock:
            self.sent[kind] = self.sent.get(kind, 0) + 1
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return {"status": response.status, "answer": response.read().decode()}
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "answer": exc.read().decode(errors="replace")}
        except OSError as exc:
            return {"status": None, "answer": f"unreachable: {type(exc).__name__}"}

    # -- what WeChat pushes ------------------------------------------------------------

    def component(self, info_type: str, fields: dict[str, str]) -> dict[str, Any]:
        """A push to the component's server (``InfoType`` and its fields)."""
        assert self.component_appid is not None
        inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
        xml = (
            f"<xml><AppId><![CDATA[{self.component_appid}]]></AppId>"
            f"<CreateTime>{int(time.time())}</CreateTime>"
            f"<InfoType><![CDATA[{info_type}]]></InfoType>{inner}</xml>"
        )
        return self.post("component", xml, sealed_for=self.component_appid, kind=info_type)

    def account_event(self, appid: str, event: str, openid: str, *, sealed: bool) -> dict[str, Any]:
        """A fan's event (``subscribe``, ``unsubscribe``...) to the account's server."""
        xml = (
            f"<xml><ToUserName><![CDATA[gh_{appid[-12:]}]]></ToUserName>"
            f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime>"
            f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event></xml>"
        )
        sealed_for = self.component_appid if sealed else None
        return self.post(appid, xml, sealed_for=sealed_for, kind=event)


class TicketPushes:
    """Pushes a new component_verify_ticket every ``every_s`` seconds, on a daemon thread."""

    def __init__(
        self, pusher: Pusher, issue: Any, *, every_s: float = TICKET_EVERY_S, count: int = 0
    ) -> None:
        self._pusher, self._issue, self._every_s = pusher, issue, every_s
        #: Pushes left before they stop (0: never stop).
        self._left = count
        self._stop = threading.Event()
        self.paused = False

    def start(self) -> TicketPushes:
        threading.Thread(target=self._run, name="fakewechat-tickets", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.paused:
                self._pusher.component(
                    "component_verify_ticket", {"ComponentVerifyTicket": self._issue()}
                )
                if self._left > 0:
                    self._left -= 1
                    if self._left == 0:
                        return  # the pushes stop: the last ticket ages out
            self._stop.wait(self._every_s)


def random_aes_key() -> str:
    """A new EncodingAESKey (43 characters of base64)."""
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")
