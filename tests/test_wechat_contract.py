"""The client against the simulator over real HTTP: every call of the tag API and its errcodes."""

from __future__ import annotations

import http.server
import threading
import time
from typing import ClassVar

import pytest
import urllib3

from tests.helpers import APPID, SECRET, Sim
from worker.runtime.processes import free_port
from worker.wechat import (
    CredentialError,
    NetworkError,
    OpenidError,
    ProgrammingError,
    QuotaError,
    RejectedError,
    TagError,
    TokenError,
    TransientError,
    WeChatClient,
)
from worker.wechat.client import last_sent_at
from worker.wechat.errcodes import ERRCODES, Action, ErrorClass
from worker.wechat.tokens import MemoryTokenStore


def calls(sim: Sim, path: str) -> int:
    return int(sim.stats()["calls"].get(path, 0))


# -- create ------------------------------------------------------------------------------


def test_create_tag_returns_its_id_from_100(client: WeChatClient) -> None:
    """tags/create answers the new tag's id; ids start at 100."""
    # When
    first, second = client.create_tag("广东"), client.create_tag("vip")
    # Then
    assert (first.id, first.name) == (100, "广东")
    assert second.id == 101


def test_create_duplicate_name_is_45157(client: WeChatClient) -> None:
    """A name already used is refused with 45157."""
    client.create_tag("vip")
    with pytest.raises(RejectedError) as caught:
        client.create_tag("vip")
    assert caught.value.errcode == 45157


def test_create_long_name_refused_before_calling(client: WeChatClient, sim: Sim) -> None:
    """The client refuses a name over 30 UTF-8 bytes without calling WeChat."""
    # Given: ten CJK characters are 30 bytes, eleven are 33
    client.create_tag("一" * 10)
    # When / Then
    with pytest.raises(ValueError, match="33 UTF-8 bytes"):
        client.create_tag("一" * 11)
    assert calls(sim, "tags/create") == 1


def test_simulator_answers_45158_and_45157_for_bad_names(sim: Sim) -> None:
    """The simulator enforces the same limits for callers that skip the check."""
    token = sim.token()
    assert sim.api("tags/create", {"tag": {"name": "x" * 31}}, token=token)["errcode"] == 45158
    assert sim.api("tags/create", {"tag": {"name": ""}}, token=token)["errcode"] == 45157
    assert "tag" in sim.api("tags/create", {"tag": {"name": "x" * 30}}, token=token)


def test_create_101st_tag_is_45056(client: WeChatClient) -> None:
    """An account holds at most 100 tags."""
    for i in range(100):
        client.create_tag(f"t{i}")
    with pytest.raises(RejectedError) as caught:
        client.create_tag("one too many")
    assert caught.value.errcode == 45056


# -- list, rename, delete ----------------------------------------------------------------


def test_list_tags_counts_fans(client: WeChatClient, sim: Sim) -> None:
    """tags/get lists every tag with its number of fans."""
    a, b = client.create_tag("a"), client.create_tag("b")
    client.batch_tag(a.id, sim.fans(7))
    tags = {t.id: (t.name, t.count) for t in client.list_tags()}
    assert tags == {a.id: ("a", 7), b.id: ("b", 0)}


def test_rename_tag(client: WeChatClient) -> None:
    """tags/update renames; the new name is listed."""
    tag = client.create_tag("old")
    client.rename_tag(tag.id, "new")
    assert [t.name for t in client.list_tags()] == ["new"]


@pytest.mark.parametrize("reserved", [0, 1, 2])
def test_reserved_tags_cannot_be_renamed_or_deleted(client: WeChatClient, reserved: int) -> None:
    """Tags 0, 1 and 2 answer 45058 to rename and delete."""
    with pytest.raises(RejectedError) as renamed:
        client.rename_tag(reserved, "mine")
    with pytest.raises(RejectedError) as deleted:
        client.delete_tag(reserved)
    assert renamed.value.errcode == deleted.value.errcode == 45058


def test_rename_to_a_taken_name_is_45157(client: WeChatClient) -> None:
    """Renaming onto another tag's name is refused."""
    client.create_tag("a")
    b = client.create_tag("b")
    with pytest.raises(RejectedError) as caught:
        client.rename_tag(b.id, "a")
    assert caught.value.errcode == 45157


def test_delete_tag_removes_it_from_its_fans(client: WeChatClient, sim: Sim) -> None:
    """tags/delete removes the tag and its memberships."""
    tag = client.create_tag("gone")
    fans = sim.fans(3)
    client.batch_tag(tag.id, fans)
    client.delete_tag(tag.id)
    assert client.list_tags() == []
    assert client.tags_of_fan(fans[0]) == []


def test_delete_tag_over_100000_fans_is_45057(client: WeChatClient, sim: Sim) -> None:
    """A tag with over 100,000 fans cannot be deleted until it is untagged below that."""
    # Given: 100,001 fans on the tag (seeded in bulk)
    sim.post("/_sim/fans", {"count": 100_001 - 2000})
    tag = client.create_tag("huge")
    assert sim.post("/_sim/members", {"tagid": tag.id, "count": 100_001})["count"] == 100_001
    # When / Then
    with pytest.raises(RejectedError) as caught:
        client.delete_tag(tag.id)
    assert caught.value.errcode == 45057
    client.batch_untag(tag.id, sim.fans(1))
    client.delete_tag(tag.id)
    assert client.list_tags() == []


def test_missing_tag_is_45159_everywhere(client: WeChatClient, sim: Sim) -> None:
    """Every call naming a tag that does not exist answers 45159."""
    fan = sim.fans(1)
    for call in (
        lambda: client.batch_tag(999, fan),
        lambda: client.batch_untag(999, fan),
        lambda: client.tag_fans(999),
        lambda: client.delete_tag(999),
        lambda: client.rename_tag(999, "x"),
    ):
        with pytest.raises(TagError) as caught:
            call()
        assert caught.value.errcode == 45159


# -- fans of a tag -----------------------------------------------------------------------


def test_iter_tag_fans_pages_to_the_end(client: WeChatClient, sim: Sim) -> None:
    """user/tag/get pages by next_openid; the iterator returns every fan once."""
    # Given: 23 fans and pages of 5
    sim.config(page_size=5)
    tag = client.create_tag("paged")
    fans = sim.fans(23)
    client.batch_tag(tag.id, fans)
    # When
    first = client.tag_fans(tag.id)
    everyone = list(client.iter_tag_fans(tag.id))
    # Then
    assert len(first.openids) == 5 and first.next_openid == first.openids[-1]
    assert sorted(everyone) == sorted(fans) and len(everyone) == 23
    assert calls(sim, "user/tag/get") == 1 + 6  # five full pages and the empty last one


def test_tag_fans_pages_hold_10000(client: WeChatClient, sim: Sim) -> None:
    """The default page is 10,000 openids."""
    tag = client.create_tag("big")
    sim.post("/_sim/members", {"tagid": tag.id, "count": 2000})
    sim.config(page_size=1000)
    assert len(client.tag_fans(tag.id).openids) == 1000
    sim.post("/_sim/reset")
    assert sim.get("/_sim/config")["page_size"] == 10_000


def test_tag_fans_with_bad_next_openid_is_40003(client: WeChatClient) -> None:
    """A next_openid that is no openid answers 40003."""
    tag = client.create_tag("t")
    with pytest.raises(OpenidError) as caught:
        client.tag_fans(tag.id, "not-an-openid")
    assert caught.value.errcode == 40003


# -- batch tagging -----------------------------------------------------------------------


def test_batch_tag_and_untag_50(client: WeChatClient, sim: Sim) -> None:
    """Tagging and untagging 50 fans in one call each; both are idempotent."""
    tag = client.create_tag("t")
    fans = sim.fans(50)
    client.batch_tag(tag.id, fans)
    client.batch_tag(tag.id, fans)
    assert sorted(sim.state()["tags"][str(tag.id)]["fans"]) == sorted(fans)
    client.batch_untag(tag.id, fans[:20])
    client.batch_untag(tag.id, fans[:20])
    assert sorted(sim.state()["tags"][str(tag.id)]["fans"]) == sorted(fans[20:])
    assert sim.stats()["batch_sizes"] == {"tagging": {"50": 2}, "untagging": {"20": 2}}


def test_batch_over_50_refused_before_calling(client: WeChatClient, sim: Sim) -> None:
    """The client refuses 51 openids without sending; the simulator answers 40032."""
    tag = client.create_tag("t")
    with pytest.raises(ValueError, match="1 to 50"):
        client.batch_tag(tag.id, sim.fans(51))
    assert calls(sim, "tags/members/batchtagging") == 0
    for path in ("tags/members/batchtagging", "tags/members/batchuntagging"):
        answer = sim.api(path, {"tagid": tag.id, "openid_list": sim.fans(51)})
        assert answer["errcode"] == 40032


@pytest.mark.parametrize("untag", [False, True])
def test_unknown_and_foreign_openids(client: WeChatClient, sim: Sim, untag: bool) -> None:
    """An unknown openid fails a batch with 40003, another AppID's with 49003; nothing applies."""
    tag = client.create_tag("t")
    good = sim.fans(10)
    call = client.batch_untag if untag else client.batch_tag
    client.batch_tag(tag.id, good[:5])
    unknown = good[0][:6] + "x" * 22  # this AppID's prefix, but no such fan
    for bad, code in ((unknown, 40003), (sim.foreign(1)[0], 49003), ("short", 40003)):
        with pytest.raises(OpenidError) as caught:
            call(tag.id, [*good, bad])
        assert caught.value.errcode == code
    assert sorted(sim.state()["tags"][str(tag.id)]["fans"]) == sorted(good[:5])


def test_fan_over_max_tags_is_45059(client: WeChatClient, sim: Sim) -> None:
    """Tagging a fan that already carries the most tags answers 45059 for the whole batch."""
    sim.config(max_tags_per_fan=2)
    full, other = sim.fans(2)
    tags = [client.create_tag(f"t{i}") for i in range(3)]
    client.batch_tag(tags[0].id, [full])
    client.batch_tag(tags[1].id, [full])
    client.batch_tag(tags[1].id, [full])  # already carried: fine
    with pytest.raises(OpenidError) as caught:
        client.batch_tag(tags[2].id, [other, full])
    assert caught.value.errcode == 45059
    assert client.tags_of_fan(other) == []


def test_default_max_tags_per_fan_is_20(sim: Sim) -> None:
    """A fan may carry 20 tags today."""
    assert sim.get("/_sim/config")["max_tags_per_fan"] == 20


# -- tags of a fan -----------------------------------------------------------------------


def test_tags_of_fan(client: WeChatClient, sim: Sim) -> None:
    """tags/getidlist lists the fan's tag ids; bad openids answer 40003 or 49003."""
    a, b = client.create_tag("a"), client.create_tag("b")
    fan = sim.fans(1)[0]
    client.batch_tag(a.id, [fan])
    client.batch_tag(b.id, [fan])
    assert sorted(client.tags_of_fan(fan)) == [a.id, b.id]
    with pytest.raises(OpenidError) as unknown:
        client.tags_of_fan(fan[:6] + "y" * 22)
    with pytest.raises(OpenidError) as foreign:
        client.tags_of_fan(sim.foreign(1)[0])
    assert (unknown.value.errcode, foreign.value.errcode) == (40003, 49003)


# -- tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stable", "classic"])
def test_token_modes(sim: Sim, mode: str) -> None:
    """Both token endpoints give a token the API accepts."""
    with WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url, token_mode=mode) as wechat:  # type: ignore[arg-type]
        assert wechat.list_tags() == []
    path = "stable_token" if mode == "stable" else "token"
    assert sim.stats()["calls"][path] == 1


def test_bad_appid_and_secret_are_credential_errors(sim: Sim) -> None:
    """40013 for a wrong AppID, 40125 for a wrong secret, raised as CredentialError."""
    for appid, secret, code in ((APPID + "x", SECRET, 40013), (APPID, "wrong-secret-value", 40125)):
        wechat = WeChatClient(appid=appid, secret=secret, api_base=sim.url)
        with wechat, pytest.raises(CredentialError) as caught:
            wechat.list_tags()
        assert caught.value.errcode == code


def test_missing_unknown_and_malformed_tokens(sim: Sim) -> None:
    """41001 without a token, 40001 for an unknown one, 40014 for a malformed one."""
    assert sim.api("tags/get", token="")["errcode"] == 41001
    assert sim.api("tags/get", token="A" * 64)["errcode"] == 40001
    assert sim.api("tags/get", token="bad token!")["errcode"] == 40014


def test_expired_token_is_refreshed_once_and_resent(client: WeChatClient, sim: Sim) -> None:
    """After 42001 the client fetches one new token and resends the call once."""
    client.list_tags()
    sim.post("/_sim/expire_tokens")
    assert client.list_tags() == []
    stats = sim.stats()
    assert stats["token_fetches"] == 2
    assert stats["errcodes"]["42001"] == 1
    assert stats["calls"]["tags/get"] == 3


def test_token_error_twice_is_raised_not_looped(sim: Sim) -> None:
    """If the fresh token fails too, the client raises TokenError after one resend."""
    store = MemoryTokenStore()
    with WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url, token_store=store) as wechat:
        wechat.list_tags()
        sim.config(token_ttl_s=1e-6)  # every new token is born expired (1 ms took no longer)
        sim.post("/_sim/expire_tokens")
        with pytest.raises(TokenError):
            wechat.list_tags()
    assert sim.stats()["calls"]["tags/get"] == 3


def test_old_token_stays_valid_after_a_new_fetch(sim: Sim) -> None:
    """A newly fetched token leaves the previous one valid for a while (classic token)."""
    first = sim.token()
    sim.api("tags/get", token=first)
    body = {
        "grant_type": "client_credential",
        "appid": APPID,
        "secret": SECRET,
        "force_refresh": True,
    }
    second = sim.http.post(f"{sim.url}/cgi-bin/stable_token", json=body, timeout=5).json()[
        "access_token"
    ]
    assert second != first
    assert sim.api("tags/get", token=first).get("errcode", 0) == 0


# -- quotas ------------------------------------------------------------------------------


def test_per_second_rate_is_45011(client: WeChatClient, sim: Sim) -> None:
    """Calls beyond rate_per_sec in one second answer 45011."""
    client.list_tags()
    sim.config(rate_per_sec=3)
    codes = []
    for _ in range(8):
        try:
            client.list_tags()
            codes.append(0)
        except QuotaError as exc:
            codes.append(exc.errcode or 0)
    assert 45011 in codes and 0 in codes


def test_daily_quota_is_45009_until_cleared(client: WeChatClient, sim: Sim) -> None:
    """daily_quota per path answers 45009; clear_quota resets; quota/get reports it."""
    tag = client.create_tag("t")
    sim.config(daily_quota=3)
    for fan in sim.fans(3):
        client.batch_tag(tag.id, [fan])
    with pytest.raises(QuotaError) as caught:
        client.batch_tag(tag.id, sim.fans(1))
    assert caught.value.errcode == 45009
    quota = client.get_quota("/cgi-bin/tags/members/batchtagging")
    assert (quota.daily_limit, quota.used, quota.remain) == (3, 3, 0)
    client.list_tags()  # another path has its own quota
    client.clear_quota()
    client.batch_tag(tag.id, sim.fans(1))
    assert client.get_quota().used == 1


# -- faults and credentials --------------------------------------------------------------


def test_system_busy_is_transient(client: WeChatClient, sim: Sim) -> None:
    """-1 is raised as a TransientError and applies nothing."""
    tag = client.create_tag("t")
    sim.config(busy_rate=1.0)
    with pytest.raises(TransientError) as caught:
        client.batch_tag(tag.id, sim.fans(5))
    assert caught.value.errcode == -1
    assert sim.state()["tags"][str(tag.id)]["fans"] == []


def test_http_500_is_a_network_error(client: WeChatClient, sim: Sim) -> None:
    """HTTP 5xx is a NetworkError, a kind of TransientError, without errcode."""
    sim.config(http500_rate=1.0)
    with pytest.raises(NetworkError) as caught:
        client.list_tags()
    assert caught.value.errcode is None and "HTTP 500" in str(caught.value)


def test_timeout_is_a_network_error(sim: Sim) -> None:
    """An answer that does not come within the read timeout is a NetworkError."""
    with WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url, read_timeout=0.3) as wechat:
        wechat.list_tags()
        sim.config(timeout_rate=1.0, timeout_hang_s=2.0)
        with pytest.raises(NetworkError, match="timed out"):
            wechat.list_tags()


def test_latency_is_added(client: WeChatClient, sim: Sim) -> None:
    """latency_ms delays every answer by a time within its range."""
    import time

    client.list_tags()
    sim.config(latency_ms=[150, 200])
    started = time.monotonic()
    client.list_tags()
    assert time.monotonic() - started >= 0.15


def test_connection_refused_is_a_network_error() -> None:
    """No server at all is a NetworkError too."""
    from worker.runtime.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"
    wechat = WeChatClient(appid=APPID, secret=SECRET, api_base=url, connect_timeout=0.5)
    with wechat, pytest.raises(NetworkError):
        wechat.list_tags()


@pytest.mark.parametrize("code", [40164, 61004, 48001])
def test_ip_whitelist_and_permission_are_credential_errors(
    client: WeChatClient, sim: Sim, code: int
) -> None:
    """Errcodes only a human can fix are CredentialErrors."""
    sim.config(forced_errcodes={"tags/members/batchtagging": code})
    tag = client.create_tag("t")
    with pytest.raises(CredentialError) as caught:
        client.batch_tag(tag.id, sim.fans(1))
    assert caught.value.errcode == code


def test_malformed_body_is_a_programming_error(sim: Sim) -> None:
    """A body that is not JSON answers 47001, which the table calls a bug."""
    response = sim.http.post(
        f"{sim.url}/cgi-bin/tags/create",
        params={"access_token": sim.token()},
        data=b"{not json",
        timeout=5,
    )
    assert response.json()["errcode"] == 47001
    assert ERRCODES[47001].error_class is ErrorClass.PROGRAMMING


def test_unknown_errcode_is_transient(client: WeChatClient, sim: Sim) -> None:
    """An errcode the table does not know is retried, not dropped."""
    sim.config(forced_errcodes={"tags/get": 12345})
    with pytest.raises(TransientError) as caught:
        client.list_tags()
    assert caught.value.errcode == 12345
    assert type(caught.value) is TransientError


# -- the table ---------------------------------------------------------------------------


def test_table_holds_every_errcode_of_the_seed_and_design() -> None:
    """Every errcode of the tag API and its platform has a row with a class and an action."""
    named = {-1, 40001, 40003, 40013, 40014, 40032, 40125, 40164, 41001, 42001, 45009, 45011}
    named |= {45056, 45057, 45058, 45059, 45157, 45158, 45159, 48001, 49003, 61004}
    assert named <= set(ERRCODES)
    assert {row.error_class for row in ERRCODES.values()} == set(ErrorClass)
    assert ERRCODES[40003].action is Action.SPLIT
    assert ERRCODES[45159].action is Action.VERIFY_TAG
    assert ERRCODES[40032].action is Action.DEAD_LETTER
    assert (ERRCODES[45009].pause_scope, ERRCODES[45011].pause_scope) == ("api", "account")


def test_exceptions_carry_call_errcode_and_errmsg(client: WeChatClient) -> None:
    """A WeChatError names its call, errcode and errmsg, and survives pickling."""
    import pickle

    with pytest.raises(TagError) as caught:
        client.delete_tag(4242)
    error = caught.value
    assert (error.call, error.errcode) == ("tags/delete", 45159)
    assert "invalid tag" in error.errmsg
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.errcode, copy.call) == (TagError, 45159, "tags/delete")
    assert not isinstance(error, ProgrammingError)


def test_the_errcodes_docs_page_shows_the_errcode_table_as_it_is() -> None:
    """The docs' errcode reference is the errcode table, rendered (`tagsync errcodes`)."""
    from pathlib import Path

    from worker.wechat.errcodes import markdown_table

    # Given: the docs page of the failure policy's errcodes
    page = Path(__file__).parent.parent / "docs" / "reference" / "errcodes.md"
    text = page.read_text(encoding="utf-8")
    # When: the table between its markers is read
    shown = text.split("<!-- errcodes:begin -->\n")[1].split("\n<!-- errcodes:end -->")[0]
    # Then
    assert shown == markdown_table()


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward HTTP proxy: requests come with the whole URL, and are sent on as they are."""

    seen: ClassVar[list[str]] = []
    upstream = urllib3.PoolManager(retries=False)

    def _forward(self) -> None:
        self.seen.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        answer = self.upstream.request(
            self.command, self.path, body=self.rfile.read(length) if length else None,
            headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
        )  # fmt: skip
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(answer.data)))
        self.end_headers()
        self.wfile.write(answer.data)

    do_GET = do_POST = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_calls_go_through_the_environments_proxy(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set, every call (token included) goes through it with its whole URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Proxy.seen.clear()
    try:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        with WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url) as client:
            tag = client.create_tag("through-proxy")
            assert [t.id for t in client.list_tags()] == [tag.id]
    finally:
        server.shutdown()
        server.server_close()
    assert [p.split("?")[0] for p in _Proxy.seen] == [
        f"{sim.url}/cgi-bin/stable_token",
        f"{sim.url}/cgi-bin/tags/create",
        f"{sim.url}/cgi-bin/tags/get",
    ]


def test_a_call_notes_when_its_request_left(client: WeChatClient, sim: Sim) -> None:
    """The send time the gate's late-call check reads: after the call began and before its
    answer (WeChat answering in 300 ms); none for a request that never left."""
    client.list_tags()  # the token first: its fetch is a request of its own
    sim.config(latency_ms=[300, 300])
    began = time.monotonic()
    client.list_tags()
    answered = time.monotonic()
    sent = last_sent_at()
    assert sent is not None and began <= sent <= answered - 0.25
    nowhere = f"http://127.0.0.1:{free_port()}"
    with (
        WeChatClient(appid=APPID, secret=SECRET, api_base=nowhere) as unreachable,
        pytest.raises(NetworkError),
    ):
        unreachable.list_tags()
    assert last_sent_at() is None
