"""WeChat's pushes to a server: signatures, the AES "safe mode" envelope, and the XML inside.

WeChat signs a push with ``SHA1(sort(token, timestamp, nonce[, Encrypt]))`` and, in safe
mode, encrypts its XML with AES-256-CBC: key = base64(EncodingAESKey + "="), IV = the key's
first 16 bytes, plaintext = 16 random bytes + 4-byte big-endian length + XML + AppID,
PKCS#7-padded to 32-byte blocks. ``PushCrypto`` checks and opens such a push (and seals one,
for tests); every refusal is a ``PushRejected`` naming why, never another exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeXML
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml.common import DefusedXmlException

#: A push older (or further in the future) than this is refused as a replay, s.
MAX_AGE_S = 300
#: AES block size WeChat pads to (PKCS#7 over 32-byte blocks, not AES's 16).
BLOCK = 32
#: Largest push body read, bytes (a push is a few hundred bytes).
MAX_PUSH_BYTES = 64 * 1024


class PushRejected(ValueError):
    """A push that is not WeChat's, or not for this server: ``reason`` says which check."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def signature(*parts: str) -> str:
    """WeChat's signature: SHA1 of the parts sorted and joined."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 (WeChat's)


def check_signature(expected: str, *parts: str) -> None:
    """Raise ``PushRejected`` unless ``expected`` is the signature of ``parts``."""
    if not hmac.compare_digest(signature(*parts).encode(), expected.encode()):
        raise PushRejected("signature", "the signature does not match")


def check_timestamp(timestamp: str, now: float | None = None) -> None:
    """Raise ``PushRejected`` for a timestamp that is not a number or is too far from now."""
    if not timestamp.isdigit():
        raise PushRejected("timestamp", "the timestamp is not a number")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > MAX_AGE_S:
        raise PushRejected("timestamp", f"the timestamp is over {MAX_AGE_S} s from now (replay?)")


def parse_xml(body: bytes) -> dict[str, str]:
    """The child elements of a push's ``<xml>`` root as text (``PushRejected`` otherwise)."""
    if len(body) > MAX_PUSH_BYTES:
        raise PushRejected("body", f"over {MAX_PUSH_BYTES} bytes")
    try:
        root: Element = SafeXML.fromstring(body)
    except (SafeXML.ParseError, DefusedXmlException, ValueError) as exc:
        raise PushRejected("body", f"not XML: {type(exc).__name__}") from None
    if root.tag != "xml":
        raise PushRejected("body", "the root element is not <xml>")
    return {child.tag: (child.text or "").strip() for child in root}


class PushCrypto:
    """Opens and seals safe-mode pushes of one AppID (a component or an account)."""

    def __init__(self, *, token: str, encoding_aes_key: str, appid: str) -> None:
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(encoding_aes_key) != 43 or len(key) != 32:
            raise ValueError("an EncodingAESKey is 43 characters of base64 (32 bytes)")
        self._token = token
        self._key = key
        self.appid = appid

    def __repr__(self) -> str:
        return f"PushCrypto(appid={self.appid!r}, token=***, key=***)"

    def open(self, query: dict[str, str], body: bytes) -> dict[str, str]:
        """The fields of a safe-mode push: ``msg_signature``, ``timestamp`` and ``nonce``
        from the query, ``<Encrypt>`` from the body; ``PushRejected`` on any failed check."""
        envelope = parse_xml(body)
        encrypted = envelope.get("Encrypt", "")
        if not encrypted:
            raise PushRejected("body", "no <Encrypt> element")
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        check_signature(query.get("msg_signature", ""), self._token, timestamp, nonce, encrypted)
        check_timestamp(timestamp)
        return parse_xml(self.decrypt(encrypted).encode())

    def decrypt(self, encrypted: str) -> str:
        """The XML inside an ``<Encrypt>`` value, checked for padding and AppID."""
        try:
            data = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise PushRejected("encryption", "Encrypt is not base64") from None
        if not data or len(data) % 16:
            raise PushRejected("encryption", "not whole AES blocks")
        decryptor = Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16])).decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        padding = plain[-1]
        if not 1 <= padding <= BLOCK or plain[-padding:] != bytes([padding]) * padding:
            raise PushRejected("padding", "bad PKCS#7 padding (wrong key?)")
        content = plain[16:-padding]
        if len(content) < 4:
            raise PushRejected("padding", "too short")
        (length,) = struct.unpack(">I", content[:4])
        message, appid = content[4 : 4 + length], content[4 + length :]
        if len(message) != length:
            raise PushRejected("padding", "the length field overruns the message")
        if appid.decode(errors="replace") != self.appid:
            raise PushRejected("appid", "sealed for another AppID")
        try:
            return message.decode()
        except UnicodeDecodeError:
            raise PushRejected("encryption", "the message is not UTF-8") from None

    def encrypt(self, message: str) -> str:
        """``message`` sealed as WeChat seals it (the simulator's and the tests' side)."""
        body = message.encode()
        plain = os.urandom(16) + struct.pack(">I", len(body)) + body + self.appid.encode()
        padding = BLOCK - len(plain) % BLOCK
        plain += bytes([padding]) * padding
        encryptor = Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16])).encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def seal(self, message: str, *, timestamp: str, nonce: str) -> tuple[dict[str, str], bytes]:
        """A whole safe-mode push of ``message``: its query and its body."""
        encrypted = self.encrypt(message)
        query = {
            "timestamp": timestamp,
            "nonce": nonce,
            "encrypt_type": "aes",
            "msg_signature": signature(self._token, timestamp, nonce, encrypted),
        }
        body = f"<xml><ToUserName><![CDATA[{self.appid}]]></ToUserName>"
        body += f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        return query, body.encode()
