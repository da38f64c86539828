"""The accounts file, the authorized accounts in Redis, and the live directory."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from tests.helpers import tagsync, wait_until
from worker.accounts import Accounts, accounts_config
from worker.accounts.authorized import AuthorizedAccounts
from worker.accounts.config import AccountsFileError, Limits, load_accounts_file
from worker.accounts.directory import RELOAD_INTERVAL_S
from worker.base.settings import Settings, SettingsError
from worker.http import DeploymentApp

GOOD = """
[defaults]
rate = 5

[[accounts]]
appid = "wx1111111111111111"
secret = "env:SECRET_ONE"
rate = 50

[[accounts]]
appid = "wx2222222222222222"
secret = "env:SECRET_TWO"
daily_budget = 1000
token_mode = "classic"

[component]
appid = "wxc0000000000000001"
secret = "env:COMPONENT_SECRET"
"""
ENV = {"SECRET_ONE": "s1", "SECRET_TWO": "s2", "COMPONENT_SECRET": "c1"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file_gives_each_account_its_limits(tmp_path: Path) -> None:
    """Per-account keys override [defaults], which override the environment's limits."""
    # Given / When
    config = load_accounts_file(write(tmp_path, GOOD), ENV, base=Limits(rate=20, burst=3))
    # Then
    one, two = config.accounts
    assert (one.appid, one.limits.rate, one.limits.burst) == ("wx1111111111111111", 50.0, 3)
    assert (two.limits.rate, two.limits.daily_budget, two.limits.token_mode) == (
        5.0,
        1000,
        "classic",
    )
    assert one.secret is not None and one.secret.reveal() == "s1"
    assert config.component is not None and config.component.secret.reveal() == "c1"
    assert config.defaults.rate == 5.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("rate = 50", "rate = -1"), ":8: accounts[0].rate: must be a positive"),
        (
            GOOD.replace("daily_budget = 1000", "daily_budget = 'x'"),
            ":13: accounts[1].daily_budget",
        ),
        (GOOD.replace('token_mode = "classic"', 'token_mode = "x"'), ":14: accounts[1].token_mode"),
        (GOOD.replace("rate = 50", "colour = 1"), ":8: accounts[0].colour: unknown key"),
        (
            GOOD.replace('appid = "wx2222222222222222"', 'appid = "wx1111111111111111"'),
            "listed twice",
        ),
        (GOOD.replace('appid = "wx2222222222222222"\n', ""), ":10: accounts[1]: is required"),
        (
            GOOD.replace("env:SECRET_TWO", "env:NOPE"),
            "accounts[1].secret: the variable NOPE is not set",
        ),
        (GOOD.replace("rate = 5\n", "rate = 5\nappid = 'x'\n"), ":4: defaults.appid: unknown key"),
        (GOOD + "\n[[accounts]\n", "not valid TOML"),
        ("", "names no [[accounts]] and no [component]"),
    ],
)
def test_a_bad_file_is_refused_naming_line_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Every mistake is an error that names the file, the line and the key."""
    # Given
    path = write(tmp_path, text)
    # When / Then
    with pytest.raises(AccountsFileError) as caught:
        load_accounts_file(path, ENV)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_literal_secret_works_with_a_warning_that_does_not_show_it(tmp_path: Path) -> None:
    """secret = "literal" is accepted; the warning names the line, never the secret."""
    # Given
    path = write(tmp_path, GOOD.replace('"env:SECRET_ONE"', '"literal-secret-123"'))
    # When
    with capture_logs() as logs:
        config = load_accounts_file(path, ENV)
    # Then
    assert config.accounts[0].secret is not None
    assert config.accounts[0].secret.reveal() == "literal-secret-123"
    warnings = [e for e in logs if e["event"] == "accounts.literal_secret"]
    assert warnings and warnings[0]["line"] == 7
    assert "literal-secret-123" not in repr(logs)


def test_without_a_file_the_environment_gives_one_account() -> None:
    """WECHAT_APPID/WECHAT_SECRET stay the one-account shortcut, with TAGSYNC_RATE."""
    # Given
    settings = Settings.from_env(
        {"WECHAT_APPID": "wxone", "WECHAT_SECRET": "s", "TAGSYNC_RATE": "7"}
    )
    # When
    config = accounts_config(settings)
    # Then
    (account,) = config.accounts
    assert (account.appid, account.limits.rate, config.component) == ("wxone", 7.0, None)


def test_the_worker_refuses_a_bad_file_with_the_line(tmp_path: Path, redis_url: str) -> None:
    """`tagsync worker` with a bad file exits 2 naming the line and key; nothing starts."""
    # Given
    path = write(tmp_path, GOOD.replace("rate = 50", "rate = 'fast'"))
    env = {**os.environ, **ENV, "TAGSYNC_ACCOUNTS": str(path), "TAGSYNC_REDIS_URL": redis_url}
    # When
    done = tagsync(env, "worker", "--processes", "1")
    # Then
    assert done.returncode == 2
    assert ":8: accounts[0].rate" in done.stderr


def test_authorizations_export_and_import_keep_refresh_tokens(redis_client: redis.Redis) -> None:
    """export holds every refresh token; import restores them and keeps newer ones."""
    # Given
    store = AuthorizedAccounts(redis_client)
    store.authorize("wxa", "refresh-a")
    store.authorize("wxb", "refresh-b")
    document = store.export()
    redis_client.flushall()
    store.authorize("wxb", "refresh-b-newer")
    # When
    imported, skipped = store.import_(json.loads(json.dumps(document)))
    # Then
    assert (imported, skipped) == (1, 1)
    assert store.refresh_token("wxa") == "refresh-a"
    assert store.refresh_token("wxb") == "refresh-b-newer"


def test_import_refuses_what_is_not_an_export(redis_client: redis.Redis) -> None:
    """A file of another format, or an entry without a refresh token, imports nothing."""
    # Given
    store = AuthorizedAccounts(redis_client)
    # When / Then
    with pytest.raises(ValueError, match="not a tagsync authorization export"):
        store.import_({"accounts": []})
    bad = {"format": "tagsync-authorizations/1", "accounts": [{"appid": "wxa"}]}
    with pytest.raises(ValueError, match=r"accounts\[0\].refresh_token"):
        store.import_(bad)
    assert store.appids() == set()


def test_the_export_file_is_private_and_the_cli_round_trips(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """`accounts export FILE` writes mode 0600; `accounts import` restores every account."""
    # Given
    path = write(tmp_path, GOOD)
    env = {**os.environ, **ENV, "TAGSYNC_ACCOUNTS": str(path), "TAGSYNC_REDIS_URL": redis_url}
    assert tagsync(env, "accounts", "authorize", "wxm1", "--refresh-token", "r-1").returncode == 0
    assert tagsync(env, "accounts", "authorize", "wxm2", "--refresh-token", "r-2").returncode == 0
    out = tmp_path / "auth.json"
    # When
    exported = tagsync(env, "accounts", "export", str(out))
    redis_client.flushall()
    imported = tagsync(env, "accounts", "import", str(out))
    listed = tagsync(env, "accounts", "list", "--json")
    # Then
    assert exported.returncode == 0 and "r-1" not in exported.stdout + exported.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert imported.returncode == 0, imported.stderr
    rows = {r["appid"]: r for r in json.loads(listed.stdout)}
    assert rows["wxm1"]["source"] == "authorized" and rows["wxm2"]["tokens"] == "component"
    assert "r-1" not in listed.stdout


def test_a_running_directory_picks_up_an_authorized_account(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """An account authorized while a process runs is served at its first intent, and a
    removed one stops being served within the reload interval."""
    # Given
    config = load_accounts_file(write(tmp_path, GOOD), ENV)
    directory = Accounts(config, redis=redis_client, api_base="http://127.0.0.1:9")
    assert "wxnew" not in directory
    store = AuthorizedAccounts(redis_client)
    # When
    store.authorize("wxnew", "refresh-new")
    # Then: a miss looks at Redis at once
    wait_until(lambda: "wxnew" in directory, timeout_s=3)
    account = directory.get("wxnew")
    assert account is not None and account.config.via_component
    assert account.gate.rate == 5.0  # the [defaults] of the file
    # When
    store.remove("wxnew")
    # Then
    wait_until(lambda: "wxnew" not in directory.appids(), timeout_s=RELOAD_INTERVAL_S + 3)


def test_settings_errors_name_the_accounts_file(tmp_path: Path) -> None:
    """accounts_config turns a file error into a SettingsError (exit 2 in every command)."""
    # Given
    settings = Settings.from_env({"TAGSYNC_ACCOUNTS": str(tmp_path / "missing.toml")})
    # When / Then
    with pytest.raises(SettingsError, match="cannot read the accounts file"):
        accounts_config(settings)


def post(
    app: Any, path: str, body: Any, *, token: str | None = "t0k3n", method: str = "POST"
) -> tuple[str, Any]:
    """A request to a WSGI app in process: (status line, JSON answer)."""
    payload = json.dumps(body).encode()
    environ = {
        "PATH_INFO": path,
        "REQUEST_METHOD": method,
        "CONTENT_LENGTH": str(len(payload)),
        "wsgi.input": io.BytesIO(payload),
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    seen: list[str] = []
    answer = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return seen[0], json.loads(answer)


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> Any:
    """The ingest server's WSGI app of a deployment with a component."""
    settings = Settings.from_env(
        {**ENV, "TAGSYNC_ACCOUNTS": str(write(tmp_path, GOOD)), "TAGSYNC_REDIS_URL": redis_url}
    )
    os.environ.update(ENV)
    yield DeploymentApp(token="t0k3n", settings=settings)
    for name in ENV:
        os.environ.pop(name, None)


def test_the_ingest_server_takes_tickets_and_authorizations(
    deployment: Any, redis_client: redis.Redis
) -> None:
    """POST /v1/component/ticket and /v1/accounts store them; GET lists AppIDs, no tokens."""
    # When
    ticket = post(deployment, "/v1/component/ticket", {"ticket": "ticket@@@1"})
    added = post(deployment, "/v1/accounts", {"appid": "wxm1", "refresh_token": "r-secret-1"})
    renewed = post(deployment, "/v1/accounts", {"appid": "wxm1", "refresh_token": "r-secret-2"})
    listed = post(deployment, "/v1/accounts", {}, method="GET")
    # Then
    assert ticket[0].startswith("200") and added[0].startswith("201")
    assert renewed == ("200 OK", {"appid": "wxm1", "added": False})
    assert [a["appid"] for a in listed[1]["accounts"]] == ["wxm1"]
    assert "r-secret" not in json.dumps(listed[1])
    store = AuthorizedAccounts(redis_client)
    assert store.refresh_token("wxm1") == "r-secret-2"
    assert store.ticket() is not None and store.ticket()[0] == "ticket@@@1"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "body", "token", "status"),
    [
        ("/v1/accounts", {"appid": "wxm1", "refresh_token": "r"}, None, "401"),
        ("/v1/accounts", {"appid": "wxm1", "refresh_token": "r"}, "wrong", "401"),
        ("/v1/accounts", {"appid": "wx m1", "refresh_token": "r"}, "t0k3n", "400"),
        ("/v1/accounts", {"appid": "wxm1"}, "t0k3n", "400"),
        ("/v1/accounts", ["wxm1"], "t0k3n", "400"),
        ("/v1/component/ticket", {"ticket": ""}, "t0k3n", "400"),
        ("/v1/component/ticket", {"ticket": "a\nb"}, "t0k3n", "400"),
    ],
)
def test_the_account_endpoints_refuse_bad_requests(
    deployment: Any, redis_client: redis.Redis, path: str, body: Any, token: str | None, status: str
) -> None:
    """Without the token 401; a malformed body 400; nothing is stored either way."""
    # When
    answer = post(deployment, path, body, token=token)
    # Then
    assert answer[0].startswith(status), answer
    assert AuthorizedAccounts(redis_client).appids() == set()
    assert AuthorizedAccounts(redis_client).ticket() is None


def test_the_account_endpoints_need_a_component(tmp_path: Path, redis_url: str) -> None:
    """A deployment without [component] answers 409: nothing can be authorized to it."""
    # Given
    text = GOOD[: GOOD.index("[component]")]
    settings = Settings.from_env(
        {**ENV, "TAGSYNC_ACCOUNTS": str(write(tmp_path, text)), "TAGSYNC_REDIS_URL": redis_url}
    )
    app = DeploymentApp(token="t0k3n", settings=settings)
    # When / Then
    os.environ.update(ENV)
    try:
        assert post(app, "/v1/accounts", {"appid": "wxm1", "refresh_token": "r"})[0].startswith(
            "409"
        )
    finally:
        for name in ENV:
            os.environ.pop(name, None)
