"""Every input path is total: whatever arrives, a clear refusal or an accepted intent.

Property-based (hypothesis) over the three ways in: the Python producers, the HTTP ingest
(the WSGI app in-process, and the real server for a few shapes), and `tagsync produce`.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import producers
from producers.intents import MAX_TAG_ID, InvalidIntent
from producers.wsgi import IngestApp
from tests.helpers import APPID, INGEST_TOKEN, tagsync
from worker.cli.produce import read_intents

QUEUE = "dramatiq:tagsync.intents"
TOKEN = "inputs-test-token"
OPENID = "o" + "A" * 27

#: Anything JSON can carry, and more: huge and non-finite numbers, control characters.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**31, 2**63, -1, 10**400, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["tag", "untag", OPENID, OPENID + "\n", APPID, APPID + "\n", " tag"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["op", "tag_id", "openid", "ts", "account", "x", ""]),
            children,
            max_size=6,
        ),
    ),
    max_leaves=12,
)
intent_like = st.fixed_dictionaries(
    {},
    optional={
        "op": st.one_of(st.sampled_from(["tag", "untag"]), scalars),
        "tag_id": st.one_of(st.integers(min_value=0, max_value=MAX_TAG_ID), scalars),
        "openid": st.one_of(st.just(OPENID), scalars),
        "ts": st.one_of(st.floats(min_value=1e9, max_value=1.7e9), scalars),
        "account": st.one_of(st.just(APPID), scalars),
        "extra": scalars,
    },
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(items=st.lists(st.one_of(intent_like, values), max_size=4))
def test_producers_raise_invalid_intent_and_nothing_else(queue: redis.Redis, items: Any) -> None:
    """`producers.send` enqueues every intent of a call or raises InvalidIntent, naming a field
    and enqueuing nothing."""
    before = queue.llen(QUEUE)
    refused: InvalidIntent | None = None
    try:
        accepted = producers.send(items)
    except InvalidIntent as exc:
        refused = exc
    if refused is None:
        assert accepted == len(items)
    else:
        assert refused.field and refused.message
        assert queue.llen(QUEUE) == before


@FAST
@given(tag_id=scalars, openids=st.one_of(values, st.lists(scalars, max_size=3)), ts=scalars)
def test_tag_and_untag_raise_invalid_intent_and_nothing_else(
    queue: redis.Redis, tag_id: Any, openids: Any, ts: Any
) -> None:
    """`producers.tag` with any arguments: InvalidIntent, or the intents enqueued."""
    before = queue.llen(QUEUE)
    try:
        producers.tag(tag_id, openids, ts=ts, account=APPID)
    except InvalidIntent:
        assert queue.llen(QUEUE) == before


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"op": "tag", "tag_id": 1, "openid": OPENID + "\n", "account": APPID}, "openid"),
        ({"op": "tag", "tag_id": 1, "openid": OPENID, "account": APPID + "\n"}, "account"),
        ({"op": "tag", "tag_id": 1, "openid": OPENID, "account": APPID, "ts": 10**400}, "ts"),
        ({"op": "tag", "tag_id": 2**31, "openid": OPENID, "account": APPID}, "tag_id"),
        ({"op": "tag", "tag_id": 10**5000, "openid": OPENID, "account": APPID}, "tag_id"),
        ({"op": "tag", "tag_id": 1, "openid": OPENID, 7: 1, None: 2}, "7"),
    ],
)
def test_the_inputs_that_got_through_are_refused(value: Any, field: str) -> None:
    """A trailing newline, a ts of 10**400, a tag id past 2^31 - 1: refused, naming the field."""
    with pytest.raises(InvalidIntent) as caught:
        producers.send([value])
    assert caught.value.field == field


# -- HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def app(queue: redis.Redis) -> IngestApp:
    return IngestApp(token=TOKEN)


def call(app: IngestApp, body: bytes) -> tuple[int, Any]:
    """One POST /v1/intents through the WSGI app; (status, decoded JSON body)."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = int(status.split()[0])

    environ = {
        "PATH_INFO": "/v1/intents",
        "REQUEST_METHOD": "POST",
        "HTTP_AUTHORIZATION": f"Bearer {TOKEN}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    payload = b"".join(app(environ, start_response))
    return answer["status"], json.loads(payload)


@FAST
@given(body=st.one_of(st.binary(max_size=300), values.map(lambda v: json.dumps(v).encode())))
def test_http_answers_any_bytes_with_2xx_or_4xx_json(app: IngestApp, body: bytes) -> None:
    """Any body: 202 or a 4xx with a JSON error, never a 5xx."""
    status, document = call(app, body)
    assert status == 202 or 400 <= status < 500
    assert isinstance(document, dict)


@FAST
@given(intents=st.lists(st.one_of(intent_like, values), min_size=1, max_size=4))
def test_http_refuses_a_bad_intent_whole(app: IngestApp, queue: redis.Redis, intents: Any) -> None:
    """A request with a bad intent is refused with every error located; nothing enqueued."""
    before = queue.llen(QUEUE)
    status, document = call(app, json.dumps({"intents": intents}).encode())
    if status == 202:
        assert document == {"accepted": len(intents)}
    else:
        assert status == 400 and queue.llen(QUEUE) == before
        assert all({"index", "field", "message"} <= set(e) for e in document["errors"])


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"intents": [' + b"[" * 50_000 + b"]}",
        b'{"intents": [{"op": "tag", "tag_id": 1, "openid": "x", "ts": 1' + b"0" * 5000 + b"}]}",
        b'{"intents": [{"op": "tag", "tag_id": 1, "openid": "x", "ts": 1e999}]}',
        b'{"intents": [{"op": "tag", "tag_id": 1, "openid": "\\ud800"}]}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_http_server_refuses_hostile_bodies_with_400(
    body: bytes, env: dict[str, str], ingest_url: str
) -> None:
    """The real server: deep nesting, 5,000-digit numbers, 1e999, lone surrogates, non-UTF-8."""
    response = requests.post(
        f"{ingest_url}/v1/intents",
        data=body,
        headers={"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, response.text
    assert "errors" in response.json() or "error" in response.json()


# -- tagsync produce --------------------------------------------------------------------------


@FAST
@given(
    lines=st.lists(
        st.one_of(st.binary(max_size=60), values.map(json.dumps).map(str.encode)), max_size=6
    )
)
def test_produce_reports_every_bad_line_by_number(lines: list[bytes]) -> None:
    """Any bytes: every bad line is reported with its number, and only bad lines are."""
    flat = [line.replace(b"\n", b" ") for line in lines]
    intents, errors = read_intents(io.BytesIO(b"\n".join(flat)), io.StringIO())
    numbers = [int(e.split()[1].rstrip(":")) for e in errors]
    assert numbers == sorted(set(numbers))
    assert all(1 <= n <= max(1, len(lines)) for n in numbers)
    # Each line is an intent, a reported error, or blank.
    blank = sum(1 for line in flat if _is_blank(line))
    assert len(intents) + len(errors) + blank == len(flat)


def _is_blank(line: bytes) -> bool:
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def test_produce_names_the_line_of_each_hostile_input(env: dict[str, str], tmp_path: Any) -> None:
    """Invalid UTF-8, deep nesting and a ts of 10**400 are each reported with their line; exit 2."""
    good = json.dumps({"op": "tag", "tag_id": 1, "openid": OPENID, "account": APPID}).encode()
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                good,
                b'{"op": "tag", "tag_id": 1, "openid": "\xff\xfe"}',
                b"[" * 100_000,
                json.dumps({"op": "tag", "tag_id": 1, "openid": OPENID, "ts": 10**400}).encode(),
                good,
            ]
        )
    )
    result = tagsync(env, "produce", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for number, words in ((2, "not UTF-8"), (3, "not readable JSON"), (4, "ts")):
        assert f"line {number}: " in result.stderr and words in result.stderr
    assert "line 1:" not in result.stderr and "line 5:" not in result.stderr
