"""WeChat's pushes: the safe-mode crypto against a real SDK's (wechatpy), every bad push
refused with a reason, and the Open Platform flow end to end: the simulator pushes tickets,
authorizations and fans' events to a real ingest server, which carries them out."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
import requests
import xmltodict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wechatpy.crypto import WeChatCrypto

import producers
from producers.intents import make_intent
from tests.helpers import APPID, SECRET, start_simulator, tagsync, wait_until
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.config import AccountConfig, AccountsConfig, ComponentConfig, PushKeys
from worker.accounts.pushes import PUSH_COUNTS, Pushes
from worker.base.lua import text
from worker.gate import AccountGate
from worker.http import DeploymentApp
from worker.observability.redaction import Secret
from worker.pending import PendingStore
from worker.runtime.processes import free_port, stop_process
from worker.wechat.push import PushCrypto, PushRejected, signature

COMPONENT = "wxtestpushcomponent"
B = "wxtestpushbbbbbbbb"
TOKEN = "push-token-" + SECRET[-6:]
AES_KEY = "ZmFrZXdlY2hhdC1wdXNoLWtleS0wMTIzNDU2Nzg5YWI"
OTHER_KEY = "b3RoZXItcHVzaC1rZXktMDEyMzQ1Njc4OWFiY2RlZmc"


def now() -> str:
    return str(int(time.time()))


# -- the crypto, against wechatpy's --------------------------------------------------------


def test_wechatpy_seals_and_tagsync_opens() -> None:
    """A push wechatpy's WeChatCrypto encrypts and signs opens here to its XML."""
    # Given
    sealed = WeChatCrypto(TOKEN, AES_KEY, COMPONENT).encrypt_message(
        "<xml><InfoType>component_verify_ticket</InfoType></xml>", "nonce1", now()
    )
    envelope = xmltodict.parse(sealed)["xml"]
    query = {
        "msg_signature": envelope["MsgSignature"],
        "timestamp": envelope["TimeStamp"],
        "nonce": envelope["Nonce"],
    }
    # When
    fields = PushCrypto(token=TOKEN, encoding_aes_key=AES_KEY, appid=COMPONENT).open(
        query, sealed.encode()
    )
    # Then
    assert fields == {"InfoType": "component_verify_ticket"}


def test_tagsync_seals_and_wechatpy_opens() -> None:
    """What tagsync seals (as the simulator does) wechatpy decrypts and verifies."""
    ours = PushCrypto(token=TOKEN, encoding_aes_key=AES_KEY, appid=COMPONENT)
    query, body = ours.seal("<xml><A>é 1</A></xml>", timestamp=now(), nonce="n2")
    opened = WeChatCrypto(TOKEN, AES_KEY, COMPONENT).decrypt_message(
        body, query["msg_signature"], query["timestamp"], query["nonce"]
    )
    assert opened == "<xml><A>é 1</A></xml>"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("signature", "signature"),
        ("token", "signature"),
        ("key", "padding"),
        ("appid", "appid"),
        ("old", "timestamp"),
        ("future", "timestamp"),
        ("body", "body"),
        ("no_encrypt", "body"),
        ("not_base64", "signature"),
    ],
)
def test_each_bad_push_is_refused_with_its_reason(change: str, reason: str) -> None:
    """Bad signature, another token or key, another AppID, a replayed or future timestamp,
    a body that is not the envelope: PushRejected naming the check, nothing else."""
    # Given: a good push, then one thing wrong with it
    timestamp = now()
    if change == "old":
        timestamp = str(int(time.time()) - 301)
    if change == "future":
        timestamp = str(int(time.time()) + 301)
    sealer = PushCrypto(
        token="other" if change == "token" else TOKEN,
        encoding_aes_key=OTHER_KEY if change == "key" else AES_KEY,
        appid="wxsomeoneelse" if change == "appid" else COMPONENT,
    )
    query, body = sealer.seal("<xml><A>1</A></xml>", timestamp=timestamp, nonce="n")
    if change == "signature":
        query["msg_signature"] = "0" * 40
    if change == "body":
        body = b"<xml><Encrypt>unclosed"
    if change == "no_encrypt":
        body = b"<xml><ToUserName>x</ToUserName></xml>"
    if change == "not_base64":
        body = b"<xml><Encrypt>%%%%</Encrypt></xml>"
    opener = PushCrypto(token=TOKEN, encoding_aes_key=AES_KEY, appid=COMPONENT)
    if change == "key":  # right signature (same token), wrong key: the padding gives it away
        query["msg_signature"] = signature(TOKEN, query["timestamp"], "n", _encrypt_of(body))
    # When / Then
    with pytest.raises(PushRejected) as refused:
        opener.open(query, body)
    assert refused.value.reason == reason


def _encrypt_of(body: bytes) -> str:
    return str(xmltodict.parse(body)["xml"]["Encrypt"])


def test_an_entity_bomb_is_refused_unexpanded() -> None:
    """XML entities (billion laughs, external entities) are refused, never expanded."""
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><xml><A>&b;</A></xml>'
    )
    crypto = PushCrypto(token=TOKEN, encoding_aes_key=AES_KEY, appid=COMPONENT)
    query, _ = crypto.seal("<xml/>", timestamp=now(), nonce="n")
    with pytest.raises(PushRejected) as refused:
        crypto.open(query, bomb)
    assert refused.value.reason == "body"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.dictionaries(
        st.sampled_from(["msg_signature", "timestamp", "nonce", "encrypt_type", "x"]),
        st.text(max_size=50),
    ),
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda s: f"<xml><Encrypt>{s}</Encrypt></xml>".encode(),
            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/=", max_size=200),
        ),
    ),
)
def test_any_bytes_are_refused_as_push_rejected(query: dict[str, str], body: bytes) -> None:
    """Whatever arrives, opening it either succeeds or raises PushRejected: no other
    exception (a traceback, a 5xx) is possible."""
    crypto = PushCrypto(token=TOKEN, encoding_aes_key=AES_KEY, appid=COMPONENT)
    with contextlib.suppress(PushRejected):
        crypto.open(query, body)


@pytest.fixture(scope="module")
def accounts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An accounts file: an account in plain mode, a component in safe mode (push keys)."""
    folder = tmp_path_factory.mktemp("push-accounts")
    for name, value in (("s", SECRET), ("cs", "component-secret"), ("pt", TOKEN), ("pk", AES_KEY)):
        (folder / name).write_text(value, encoding="utf-8")
    path = folder / "accounts.toml"
    path.write_text(
        f'[[accounts]]\nappid = "{APPID}"\nsecret = "file:s"\npush_token = "file:pt"\n\n'
        f'[component]\nappid = "{COMPONENT}"\nsecret = "file:cs"\n'
        'push_token = "file:pt"\npush_aes_key = "file:pk"\n',
        encoding="utf-8",
    )
    return path


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/wechat/component", f"/v1/wechat/{APPID}", "/v1/wechat/../x"]),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    query=st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda t, n: urlencode(
                {"timestamp": t, "nonce": n, "signature": signature(TOKEN, t, n)}
            ),
            st.just(str(int(time.time()))),
            st.text(max_size=8),
        ),
    ),
    body=st.binary(max_size=200),
)
def test_the_push_endpoints_answer_any_request_below_500(
    redis_url: str, accounts_file: Path, path: str, method: str, query: str, body: bytes
) -> None:
    """The ingest's push endpoints answer anything (signed or not) with 2xx or 4xx, never
    a traceback or a 5xx."""
    from worker.base.settings import Settings

    settings_ = Settings(redis_url=redis_url, accounts_file=str(accounts_file))
    status = _call(DeploymentApp(token="t", settings=settings_), method, path, query, body)[0]
    assert status < 500


# -- the handler, in process ---------------------------------------------------------------


def _call(app: DeploymentApp, method: str, path: str, query: str, body: bytes) -> tuple[int, str]:
    answered: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answered["status"] = status

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    payload = b"".join(app(environ, start_response))
    return int(answered["status"].split()[0]), payload.decode(errors="replace")


def test_an_unsubscribe_drops_the_fans_pending_intents(redis_client: redis.Redis) -> None:
    """An account's plain-mode `unsubscribe` push forgets that fan's pending intents in every
    tag of the account; other fans' stay. A wrong signature changes nothing (403)."""
    # Given: an account with push keys, intents of two fans in two tags
    config = AccountsConfig((AccountConfig(APPID, Secret(SECRET), push=PushKeys(Secret(TOKEN))),))
    pushes = Pushes(config, redis=redis_client, component=None)
    store = PendingStore(redis_client)
    store.ingest(
        [make_intent("tag", t, o, 1.0, APPID) for t in (101, 102) for o in ("oLeaver", "oStay")]
    )
    event = (
        b"<xml><ToUserName>gh_x</ToUserName><FromUserName>oLeaver</FromUserName>"
        b"<CreateTime>1</CreateTime><MsgType>event</MsgType><Event>unsubscribe</Event></xml>"
    )
    timestamp = now()
    forged = {"timestamp": timestamp, "nonce": "n", "signature": "0" * 40}
    signed = {**forged, "signature": signature(TOKEN, timestamp, "n")}
    # When: a forged push, then WeChat's
    assert pushes.account_push(APPID, forged, event).status == 403
    assert store.waiting(APPID, 101) == 2
    answer = pushes.account_push(APPID, signed, event)
    # Then
    assert (answer.status, answer.body) == (200, "success")
    assert store.waiting(APPID, 101) == store.waiting(APPID, 102) == 1
    counts = {text(k): int(v) for k, v in redis_client.hgetall(PUSH_COUNTS).items()}
    assert counts == {"account:rejected_signature": 1, "account:unsubscribe": 1}


def test_the_server_url_check_echoes_only_a_signed_echostr(redis_client: redis.Redis) -> None:
    """WeChat's GET check of the server URL gets its echostr back only when signed."""
    config = AccountsConfig(
        (), component=ComponentConfig(COMPONENT, Secret("s"), push=PushKeys(Secret(TOKEN)))
    )
    pushes = Pushes(config, redis=redis_client, component=None)
    timestamp = now()
    good = {"timestamp": timestamp, "nonce": "n", "echostr": "hello42"}
    good["signature"] = signature(TOKEN, timestamp, "n")
    assert pushes.verify_url(None, good).body == "hello42"
    assert pushes.verify_url(None, {**good, "signature": "x"}).status == 403


# -- end to end: the simulator pushes to a real ingest server --------------------------------


@pytest.fixture
def push_stack(
    tmp_path: Path, redis_url: str, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """`tagsync ingest` with a component's push keys, and a simulator pushing to it
    (tickets every second; the test's parameter: more simulator options)."""
    port = free_port()
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[[accounts]]\nappid = "{APPID}"\nsecret = "env:S"\npush_token = "env:PT"\n\n'
        f'[component]\nappid = "{COMPONENT}"\nsecret = "env:CS"\n'
        f'push_token = "env:PT"\npush_aes_key = "env:PK"\n',
        encoding="utf-8",
    )
    process, sim_url = start_simulator(
        "--app", f"{B}:secret-b", "--component", f"{COMPONENT}:component-secret",
        "--push-url", f"http://127.0.0.1:{port}/v1/wechat",
        "--push-token", TOKEN, "--push-aes-key", AES_KEY, "--ticket-every", "1",
        *getattr(request, "param", ()),
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TAGSYNC_", "WECHAT_"))},
        "TAGSYNC_ACCOUNTS": str(accounts),
        "S": SECRET,
        "CS": "component-secret",
        "PT": TOKEN,
        "PK": AES_KEY,
        "TAGSYNC_REDIS_URL": redis_url,
        "WECHAT_API_BASE": sim_url,
        "TAGSYNC_INGEST_TOKEN": "ingest-token",
        "TAGSYNC_LOG_FORMAT": "json",
    }
    ingest = subprocess.Popen(
        [sys.executable, "-m", "worker", "ingest", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert ingest.stdout is not None and "listening" in ingest.stdout.readline()
    yield {
        "sim": sim_url,
        "ingest": f"http://127.0.0.1:{port}",
        "redis": redis.Redis.from_url(redis_url),
        "env": env,
    }
    stop_process(ingest)
    stop_process(process)


@pytest.mark.processes
def test_the_open_platform_flow_runs_on_pushes(push_stack: dict[str, Any]) -> None:
    """The simulator's pushes alone keep the ticket fresh, authorize account B (its code
    traded for its refresh token), pause it when it withdraws, and drop an unsubscribed
    fan's intents: no operator command."""
    sim, connection = push_stack["sim"], push_stack["redis"]
    authorized = AuthorizedAccounts(connection)
    # Then: tickets arrive every second
    wait_until(lambda: authorized.ticket() is not None, timeout_s=15, what="a ticket pushed")
    first = authorized.ticket()
    wait_until(lambda: authorized.ticket() != first, timeout_s=15, what="the next ticket")
    # When: B authorizes the component (WeChat pushes `authorized` with a code)
    answer = requests.post(f"{sim}/_sim/authorize", json={"appid": B}, timeout=30).json()
    # Then: the ingest traded the code for B's refresh token
    assert answer["push"] == {"status": 200, "answer": "success"}
    assert authorized.refresh_token(B) == answer["authorizer_refresh_token"]
    # When: a fan of B leaves (sealed with the component's keys)
    store = PendingStore(connection)
    store.ingest([make_intent("tag", 101, o, 1.0, B) for o in ("oGone", "oHere")])
    left = requests.post(
        f"{sim}/_sim/push", json={"appid": B, "event": "unsubscribe", "openid": "oGone"}, timeout=30
    ).json()
    assert left["push"]["status"] == 200 and store.waiting(B, 101) == 1
    # When: B withdraws
    gone = requests.post(f"{sim}/_sim/unauthorize", json={"appid": B}, timeout=30).json()
    # Then: B is paused for its authorization, its refresh token forgotten
    assert gone["push"]["status"] == 200
    pause = AccountGate(connection, rate=1).paused(B)
    assert pause is not None and pause.reason == "authorization"
    assert authorized.refresh_token(B) is None
    counts = {text(k): int(v) for k, v in connection.hgetall(PUSH_COUNTS).items()}
    assert counts["component:component_verify_ticket"] >= 2
    assert counts["component:authorized"] == counts["component:unauthorized"] == 1
    assert counts["account:unsubscribe"] == 1


@pytest.mark.processes
def test_pushes_with_another_key_are_refused_and_counted(
    push_stack: dict[str, Any], tmp_path: Path
) -> None:
    """A push sealed with another EncodingAESKey is refused (403), stores nothing, and is
    counted by its reason; the ingest logs no traceback."""
    connection = push_stack["redis"]
    wrong = PushCrypto(token=TOKEN, encoding_aes_key=OTHER_KEY, appid=COMPONENT)
    query, body = wrong.seal(
        "<xml><InfoType>component_verify_ticket</InfoType>"
        "<ComponentVerifyTicket>forged</ComponentVerifyTicket></xml>",
        timestamp=now(),
        nonce="n",
    )
    answer = requests.post(
        f"{push_stack['ingest']}/v1/wechat/component?{urlencode(query)}", data=body, timeout=10
    )
    assert answer.status_code == 403 and answer.text == "padding"
    ticket = AuthorizedAccounts(connection).ticket()
    assert ticket is None or ticket[0] != "forged"
    wait_until(
        lambda: int(connection.hget(PUSH_COUNTS, "component:rejected_padding") or 0) == 1,
        what="the refusal counted",
    )


@pytest.mark.long
@pytest.mark.parametrize(
    "push_stack", [("--ticket-count", "2", "--ticket-ttl", "4")], indirect=True
)
def test_a_ticket_that_stops_arriving_pauses_the_platforms_accounts(
    push_stack: dict[str, Any], start_worker: Any
) -> None:
    """WeChat's ticket pushes stop: once the last ticket is over its validity, the component
    token cannot be renewed (61005, as WeChat answers an expired ticket), and each account
    authorized through it pauses for its credentials, its intents kept; the ticket's age is
    what TagsyncComponentTicketStale watches."""
    sim, connection, env = push_stack["sim"], push_stack["redis"], push_stack["env"]
    authorized = AuthorizedAccounts(connection)
    wait_until(lambda: authorized.ticket() is not None, timeout_s=15, what="a ticket pushed")
    requests.post(f"{sim}/_sim/authorize", json={"appid": B}, timeout=30).raise_for_status()
    start_worker(processes=1, threads=2, **env)
    created = tagsync(env, "tags", "create", "--account", B, "stale")
    assert created.returncode == 0, created.stderr
    tag_id = int(created.stdout.split()[2])  # "created tag ID 'stale'"

    def fans() -> set[str]:
        state = requests.get(f"{sim}/_sim/state", params={"appid": B}, timeout=10).json()
        return set(state["tags"].get(str(tag_id), {}).get("fans", []))

    listed = requests.get(f"{sim}/_sim/fans", params={"appid": B, "limit": "2"}, timeout=10)
    first, second = listed.json()["openids"]
    producers.configure(redis_url=env["TAGSYNC_REDIS_URL"])
    try:
        producers.tag(tag_id, [first], account=B)
        wait_until(lambda: fans() == {first}, what="applied")
        # When: the pushes stopped; the last ticket ages past its validity; tokens expire
        wait_until(
            lambda: time.time() - (authorized.ticket() or ("", time.time()))[1] > 10.5,
            timeout_s=15,
            what="the last ticket expired",
        )
        requests.post(f"{sim}/_sim/expire_tokens?appid=*", json={}, timeout=30)
        producers.tag(tag_id, [second], account=B)
        # Then: B pauses for its credentials with WeChat's errcode; the intent waits
        gate = AccountGate(connection, rate=1)
        wait_until(lambda: gate.paused(B) is not None, timeout_s=30, what="B paused")
        pause = gate.paused(B)
        assert pause is not None and (pause.reason, pause.errcode) == ("credentials", "61005")
        assert PendingStore(connection).waiting(B, tag_id) == 1
    finally:
        producers.configure(None)
