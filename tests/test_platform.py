"""The simulator with several apps and a third-party platform (docs/simulator.md), over
real HTTP."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from fakewechat import Component, Platform, Simulator, SimulatorServer, serve_in_thread
from fakewechat.cli import build_parser, main

#: The first app (the one test endpoints mean without an appid).
APP_A, SECRET_A = "wxplatformtestappa", "secret-of-app-a"
#: The second app.
APP_B, SECRET_B = "wxplatformtestappb", "secret-of-app-b"
#: The third-party platform both apps may authorize.
COMPONENT, COMPONENT_SECRET = "wxcplatformtestcomp", "secret-of-the-component"
#: Fans each app starts with.
FANS = 60


class Client:
    """The platform as a test sees it: raw WeChat calls and ``/_sim/*`` endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(f"{self.url}{path}", params=params, timeout=10)

    def post(self, path: str, body: Any = None, **params: Any) -> requests.Response:
        return self.http.post(f"{self.url}{path}", params=params, json=body or {}, timeout=10)

    def sim(self, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        """A test endpoint that must succeed: GET without a body, POST with one."""
        response = self.get(path, **params) if body is None else self.post(path, body, **params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def token(self, appid: str, secret: str) -> str:
        body = {"grant_type": "client_credential", "appid": appid, "secret": secret}
        answer = self.post("/cgi-bin/stable_token", body).json()
        return str(answer["access_token"])

    def api(self, path: str, body: Any = None, *, token: str) -> dict[str, Any]:
        return dict(self.post(f"/cgi-bin/{path}", body, access_token=token).json())

    def fans(self, appid: str, count: int) -> list[str]:
        return list(self.sim("/_sim/fans", appid=appid, limit=count)["openids"])

    def component_token(self) -> str:
        ticket = self.sim("/_sim/ticket")["component_verify_ticket"]
        answer = self.post(
            "/cgi-bin/component/api_component_token",
            {
                "component_appid": COMPONENT,
                "component_appsecret": COMPONENT_SECRET,
                "component_verify_ticket": ticket,
            },
        ).json()
        return str(answer["component_access_token"])

    def authorizer_token(self, component_token: str, appid: str, refresh: str) -> dict[str, Any]:
        body = {
            "component_appid": COMPONENT,
            "authorizer_appid": appid,
            "authorizer_refresh_token": refresh,
        }
        answer = self.post(
            "/cgi-bin/component/api_authorizer_token", body, component_access_token=component_token
        )
        return dict(answer.json())

    def authorize(self, appid: str) -> str:
        return str(self.sim("/_sim/authorize", {"appid": appid})["authorizer_refresh_token"])


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """True as soon as ``predicate`` holds; False if it still does not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _serve(platform: Platform) -> Iterator[Client]:
    server = serve_in_thread(platform, port=0)
    client = Client(server.url)
    try:
        yield client
    finally:
        client.http.close()
        server.shutdown()
        server.server_close()


@pytest.fixture
def platform() -> Iterator[Client]:
    """Two apps and a component, served on a free port."""
    apps = [
        Simulator(appid=APP_A, secret=SECRET_A, fans=FANS),
        Simulator(appid=APP_B, secret=SECRET_B, fans=FANS),
    ]
    component = Component(appid=COMPONENT, secret=COMPONENT_SECRET)
    yield from _serve(Platform(apps, component=component))


@pytest.fixture
def no_component() -> Iterator[Client]:
    """One app and no component."""
    yield from _serve(Platform([Simulator(appid=APP_A, secret=SECRET_A, fans=FANS)]))


@pytest.fixture
def authorized(platform: Client) -> tuple[Client, str, str]:
    """App A has authorized the component: the client, a component token, A's refresh token."""
    return platform, platform.component_token(), platform.authorize(APP_A)


# -- several apps ---------------------------------------------------------------------------


def test_a_tag_created_in_one_app_is_not_in_another(platform: Client) -> None:
    """Each app has its own tags: a tag created with A's token is in A's state only."""
    # Given
    token = platform.token(APP_A, SECRET_A)
    # When
    created = platform.api("tags/create", {"tag": {"name": "only-a"}}, token=token)
    # Then
    assert created["tag"]["name"] == "only-a"
    assert platform.sim("/_sim/state", appid=APP_A)["tags"] != {}
    assert platform.sim("/_sim/state", appid=APP_B) == {"tags": {}}


def test_a_call_goes_to_the_app_that_issued_its_token(platform: Client) -> None:
    """B's token tags B's fans in B; the same fans are another AppID's (49003) for A's token."""
    # Given
    token_a, token_b = platform.token(APP_A, SECRET_A), platform.token(APP_B, SECRET_B)
    tag_b = platform.api("tags/create", {"tag": {"name": "b"}}, token=token_b)["tag"]["id"]
    platform.api("tags/create", {"tag": {"name": "a"}}, token=token_a)
    fans_b = platform.fans(APP_B, 3)
    # When
    by_b = platform.api(
        "tags/members/batchtagging", {"tagid": tag_b, "openid_list": fans_b}, token=token_b
    )
    by_a = platform.api(
        "tags/members/batchtagging", {"tagid": tag_b, "openid_list": fans_b}, token=token_a
    )
    # Then
    assert by_b["errcode"] == 0 and by_a["errcode"] == 49003
    assert platform.sim("/_sim/state", appid=APP_B)["tags"][str(tag_b)]["fans"] == sorted(fans_b)
    assert platform.sim("/_sim/stats", appid=APP_B)["calls"]["tags/members/batchtagging"] == 1
    assert platform.sim("/_sim/stats", appid=APP_A)["calls"]["tags/members/batchtagging"] == 1


def test_a_token_no_app_issued_is_refused_by_the_first_app(platform: Client) -> None:
    """A well-formed token nobody issued answers 40001 and counts in the first app's stats."""
    # When
    answer = platform.api("tags/get", token="x" * 64)
    # Then
    assert answer["errcode"] == 40001
    assert platform.sim("/_sim/stats")["errcodes"] == {"40001": 1}
    assert platform.sim("/_sim/stats", appid=APP_B)["calls"] == {}


def test_a_token_fetch_for_an_unknown_appid_is_40013(platform: Client) -> None:
    """token with an AppID that is no app of the platform answers 40013, like WeChat."""
    # When
    answer = platform.get(
        "/cgi-bin/token", grant_type="client_credential", appid="wxnosuchapp", secret="s"
    ).json()
    # Then
    assert answer["errcode"] == 40013


def test_the_rate_limit_of_one_app_does_not_limit_another(platform: Client) -> None:
    """rate_per_sec set on A makes A answer 45011; B's calls in the same second all pass."""
    # Given
    platform.sim("/_sim/config", {"rate_per_sec": 1}, appid=APP_A)
    token_a, token_b = platform.token(APP_A, SECRET_A), platform.token(APP_B, SECRET_B)
    # When
    codes_a = [platform.api("tags/get", token=token_a).get("errcode", 0) for _ in range(5)]
    codes_b = [platform.api("tags/get", token=token_b).get("errcode", 0) for _ in range(5)]
    # Then
    assert 45011 in codes_a
    assert codes_b == [0] * 5
    assert platform.sim("/_sim/config", appid=APP_B)["rate_per_sec"] is None


def test_config_takes_the_appid_from_the_body(platform: Client) -> None:
    """POST /_sim/config {"appid": B, ...} configures B only; appid is not a config key."""
    # When
    config = platform.sim("/_sim/config", {"appid": APP_B, "busy_rate": 0.5})
    # Then
    assert config["busy_rate"] == 0.5 and "appid" not in config
    assert platform.sim("/_sim/config", appid=APP_B)["busy_rate"] == 0.5
    assert platform.sim("/_sim/config")["busy_rate"] == 0.0


def test_stats_of_every_app_are_summed(platform: Client) -> None:
    """GET /_sim/stats?appid=* sums calls, errcodes and token fetches of every app."""
    # Given
    token_a, token_b = platform.token(APP_A, SECRET_A), platform.token(APP_B, SECRET_B)
    platform.api("tags/get", token=token_a)
    platform.api("tags/get", token=token_b)
    platform.api("tags/get", token=token_b)
    # When
    stats = platform.sim("/_sim/stats", appid="*")
    # Then
    assert stats["apps"] == 2
    assert stats["calls"] == {"stable_token": 2, "tags/get": 3}
    assert stats["errcodes"] == {"0": 5}
    assert stats["token_fetches"] == 2
    assert stats["max_calls_in_any_second"] in (1, 2)


def test_an_unknown_appid_is_404(platform: Client) -> None:
    """A test endpoint naming an appid that is no app of the platform answers 404."""
    # When
    by_query = platform.get("/_sim/state", appid="wxnosuchapp")
    by_body = platform.post("/_sim/config", {"appid": "wxnosuchapp", "busy_rate": 0.1})
    # Then
    assert by_query.status_code == 404 and "wxnosuchapp" in by_query.json()["error"]
    assert by_body.status_code == 404
    assert platform.sim("/_sim/config")["busy_rate"] == 0.0


def test_reset_of_every_app_clears_the_component_too(authorized: tuple[Client, str, str]) -> None:
    """POST /_sim/reset?appid=* resets each app and the component's tokens and authorizations."""
    # Given
    platform, component_token, refresh = authorized
    platform.sim("/_sim/config", {"appid": APP_B, "busy_rate": 0.5})
    # When
    platform.sim("/_sim/reset", {}, appid="*")
    # Then
    assert platform.sim("/_sim/config", appid=APP_B)["busy_rate"] == 0.0
    assert platform.sim("/_sim/component")["authorized"] == []
    assert platform.authorizer_token(component_token, APP_A, refresh)["errcode"] == 40001


def test_a_simulator_server_still_serves_one_simulator() -> None:
    """SimulatorServer(address, Simulator) wraps it in a one-app platform; .simulator is it."""
    # Given
    simulator = Simulator(appid=APP_A, secret=SECRET_A, fans=FANS)
    server = SimulatorServer(("127.0.0.1", 0), simulator)
    try:
        # Then
        assert server.simulator is simulator
        assert list(server.platform.apps.values()) == [simulator]
        assert server.platform.component is None
    finally:
        server.server_close()


# -- the component --------------------------------------------------------------------------


def test_an_authorized_app_is_served_through_the_component(platform: Client) -> None:
    """ticket -> component token -> authorize -> authorizer token -> batchtagging on that app."""
    # Given
    component_token = platform.component_token()
    refresh = platform.authorize(APP_B)
    # When
    answer = platform.authorizer_token(component_token, APP_B, refresh)
    token = answer["authorizer_access_token"]
    tag = platform.api("tags/create", {"tag": {"name": "via"}}, token=token)["tag"]["id"]
    fans = platform.fans(APP_B, 2)
    tagged = platform.api(
        "tags/members/batchtagging", {"tagid": tag, "openid_list": fans}, token=token
    )
    # Then
    assert answer["expires_in"] == 7200 and answer["authorizer_refresh_token"] == refresh
    assert tagged["errcode"] == 0
    assert platform.sim("/_sim/state", appid=APP_B)["tags"][str(tag)]["fans"] == sorted(fans)
    assert platform.sim("/_sim/state", appid=APP_A) == {"tags": {}}


def test_an_authorizer_token_fetch_counts_in_its_apps_stats(
    authorized: tuple[Client, str, str],
) -> None:
    """The fetch counts as a call and a token fetch of the app, outside its busiest second."""
    # Given
    platform, component_token, refresh = authorized
    # When
    platform.authorizer_token(component_token, APP_A, refresh)
    # Then
    stats = platform.sim("/_sim/stats", appid=APP_A)
    assert stats["calls"] == {"component/api_authorizer_token": 1}
    assert stats["token_fetches"] == 1 and stats["max_calls_in_any_second"] == 0
    assert platform.sim("/_sim/component") == {
        "appid": COMPONENT,
        "authorized": [APP_A],
        "component_token_fetches": 1,
        "authorizer_token_fetches": {APP_A: 1},
        "calls": {"component/api_component_token": 1, "component/api_authorizer_token": 1},
        "errcodes": {"0": 2},
    }


def test_a_ticket_the_component_never_got_is_61006(platform: Client) -> None:
    """api_component_token with an unknown verify ticket answers 61006."""
    # When
    answer = platform.post(
        "/cgi-bin/component/api_component_token",
        {
            "component_appid": COMPONENT,
            "component_appsecret": COMPONENT_SECRET,
            "component_verify_ticket": "ticket@@@never-issued",
        },
    ).json()
    # Then
    assert answer["errcode"] == 61006


def test_a_wrong_component_secret_is_40125(platform: Client) -> None:
    """api_component_token with a wrong component_appsecret answers 40125."""
    # Given
    ticket = platform.sim("/_sim/ticket")["component_verify_ticket"]
    # When
    answer = platform.post(
        "/cgi-bin/component/api_component_token",
        {
            "component_appid": COMPONENT,
            "component_appsecret": "wrong",
            "component_verify_ticket": ticket,
        },
    ).json()
    # Then
    assert answer["errcode"] == 40125


def test_an_older_ticket_stays_valid(platform: Client) -> None:
    """Each /_sim/ticket is a fresh ticket; the one before it still gets a component token."""
    # Given
    first = platform.sim("/_sim/ticket")["component_verify_ticket"]
    second = platform.sim("/_sim/ticket")["component_verify_ticket"]
    # When
    answer = platform.post(
        "/cgi-bin/component/api_component_token",
        {
            "component_appid": COMPONENT,
            "component_appsecret": COMPONENT_SECRET,
            "component_verify_ticket": first,
        },
    ).json()
    # Then
    assert first != second
    assert answer["expires_in"] == 7200 and answer["component_access_token"]


def test_a_bad_component_token_is_40001(authorized: tuple[Client, str, str]) -> None:
    """api_authorizer_token with a component token nobody issued answers 40001."""
    # Given
    platform, _, refresh = authorized
    # When
    answer = platform.authorizer_token("y" * 64, APP_A, refresh)
    # Then
    assert answer["errcode"] == 40001


def test_an_app_that_did_not_authorize_is_61003(authorized: tuple[Client, str, str]) -> None:
    """api_authorizer_token for an app without authorization, or no app of ours, is 61003."""
    # Given
    platform, component_token, refresh = authorized
    # When
    for_b = platform.authorizer_token(component_token, APP_B, refresh)
    for_stranger = platform.authorizer_token(component_token, "wxnosuchapp", refresh)
    # Then
    assert for_b["errcode"] == 61003 and for_stranger["errcode"] == 61003


def test_a_bad_refresh_token_is_61023(authorized: tuple[Client, str, str]) -> None:
    """api_authorizer_token with a refresh token the app was not given answers 61023."""
    # Given
    platform, component_token, _ = authorized
    # When
    answer = platform.authorizer_token(component_token, APP_A, "refreshtoken@@@made-up")
    # Then
    assert answer["errcode"] == 61023


def test_a_second_authorize_revokes_the_older_refresh_token(
    authorized: tuple[Client, str, str],
) -> None:
    """Authorizing again gives a new refresh token; the one before answers 61023."""
    # Given
    platform, component_token, old = authorized
    # When
    new = platform.authorize(APP_A)
    # Then
    assert new != old
    assert platform.authorizer_token(component_token, APP_A, old)["errcode"] == 61023
    assert "authorizer_access_token" in platform.authorizer_token(component_token, APP_A, new)


def test_unauthorize_revokes_the_refresh_token_and_the_issued_tokens(
    authorized: tuple[Client, str, str],
) -> None:
    """After /_sim/unauthorize its tokens get 40001, the app 61003; its own tokens still work."""
    # Given
    platform, component_token, refresh = authorized
    token = platform.authorizer_token(component_token, APP_A, refresh)["authorizer_access_token"]
    own = platform.token(APP_A, SECRET_A)
    # When
    answer = platform.sim("/_sim/unauthorize", {"appid": APP_A})
    # Then
    assert answer["revoked_tokens"] == 1
    assert platform.api("tags/get", token=token)["errcode"] == 40001
    assert platform.authorizer_token(component_token, APP_A, refresh)["errcode"] == 61003
    assert "tags" in platform.api("tags/get", token=own)
    assert platform.sim("/_sim/component")["authorized"] == []


def test_with_rotation_each_answer_carries_a_new_refresh_token(
    authorized: tuple[Client, str, str],
) -> None:
    """rotate_refresh_token: a new refresh token each answer; the old one works for the grace."""
    # Given
    platform, component_token, old = authorized
    platform.sim(
        "/_sim/config", {"appid": APP_A, "rotate_refresh_token": True, "refresh_token_grace_s": 0.3}
    )
    # When
    first = platform.authorizer_token(component_token, APP_A, old)["authorizer_refresh_token"]
    again = platform.authorizer_token(component_token, APP_A, old)
    # Then
    assert first != old
    assert again["authorizer_refresh_token"] not in (old, first)
    latest = [again["authorizer_refresh_token"]]

    def old_is_refused() -> bool:
        answer = platform.authorizer_token(component_token, APP_A, old)
        # Within the grace the old one still works, and each success rotates again.
        latest.append(answer.get("authorizer_refresh_token", latest[-1]))
        return answer.get("errcode") == 61023

    assert wait_for(old_is_refused)
    answer = platform.authorizer_token(component_token, APP_A, latest[-1])
    assert "authorizer_access_token" in answer


def test_a_revoked_app_stays_unaffected_elsewhere(authorized: tuple[Client, str, str]) -> None:
    """Unauthorizing A leaves B's authorization and B's tokens working."""
    # Given
    platform, component_token, _ = authorized
    refresh_b = platform.authorize(APP_B)
    token_b = platform.authorizer_token(component_token, APP_B, refresh_b)
    # When
    platform.sim("/_sim/unauthorize", {"appid": APP_A})
    # Then
    assert "tags" in platform.api("tags/get", token=token_b["authorizer_access_token"])
    assert platform.sim("/_sim/component")["authorized"] == [APP_B]


def test_component_endpoints_are_404_without_a_component(no_component: Client) -> None:
    """Without a component /_sim/ticket and /_sim/authorize answer 404 with a clear error."""
    # When
    ticket = no_component.get("/_sim/ticket")
    authorize = no_component.post("/_sim/authorize", {"appid": APP_A})
    # Then
    assert ticket.status_code == 404 and "component" in ticket.json()["error"]
    assert authorize.status_code == 404


# -- the command line -----------------------------------------------------------------------


def test_the_command_line_takes_several_apps_and_a_component() -> None:
    """--app is repeatable and --component is split into AppID and secret."""
    # When
    args = build_parser().parse_args(
        ["--app", f"{APP_B}:{SECRET_B}", "--app", "wxthird:s:with:colons", "--component", "wxc:s"]
    )
    # Then
    assert args.apps == [(APP_B, SECRET_B), ("wxthird", "s:with:colons")]
    assert args.component == ("wxc", "s")


def test_a_malformed_app_is_refused_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--app without APPID:SECRET form exits 2 with a message that does not echo the secret."""
    # When
    with pytest.raises(SystemExit) as exit_:
        main(["--app", "hunter2-no-colon"])
    # Then
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "APPID:SECRET" in error and "hunter2" not in error


def test_an_appid_given_twice_is_refused_with_exit_code_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same AppID as the first app and an --app is refused before anything listens."""
    # When
    code = main(["--port", "0", "--appid", APP_A, "--app", f"{APP_A}:other"])
    # Then
    assert code == 2
    assert APP_A in capsys.readouterr().err


@pytest.fixture
def fakewechat_process() -> Iterator[tuple[str, str]]:
    """``fakewechat`` with a second app and a component on a free port: its line and URL."""
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fakewechat",
                "--port",
                "0",
                "--fans",
                "5",
                "--appid",
                APP_A,
                "--secret",
                SECRET_A,
                "--app",
                f"{APP_B}:{SECRET_B}",
                "--component",
                f"{COMPONENT}:{COMPONENT_SECRET}",
            ],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert "listening on" in line, line
            yield line, line.split("listening on ")[1].split()[0]
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_command_serves_several_apps_and_a_component(
    fakewechat_process: tuple[str, str],
) -> None:
    """The listening line names the apps and the component; both apps and the component work."""
    # Given
    line, url = fakewechat_process
    client = Client(url)
    # When
    token_b = client.token(APP_B, SECRET_B)
    component_token = client.component_token()
    # Then
    assert "apps=2" in line and f"component={COMPONENT}" in line
    assert SECRET_B not in line and COMPONENT_SECRET not in line
    assert "tags" in client.api("tags/get", token=token_b)
    assert client.sim("/_sim/fans", appid=APP_B, limit=0)["total"] == 5
    assert client.sim("/_sim/component")["component_token_fetches"] == 1
    assert component_token
    client.http.close()
