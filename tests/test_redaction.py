"""The app secret and access tokens never show: not in logs, exceptions, reprs or CLI output."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import traceback

import pytest
import redis
import requests
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import APPID, SECRET, Sim
from worker.base.settings import Settings
from worker.observability.logs import configure_logging
from worker.observability.redaction import _PARAM, MASK, REDACTOR, Redactor, Secret
from worker.runtime.processes import free_port
from worker.wechat import NetworkError, RedisTokenStore, WeChatClient


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def test_redactor_masks_known_values_and_credential_parameters() -> None:
    """Known secrets are masked anywhere; access_token= and secret= values always."""
    redactor = Redactor()
    redactor.add("s3cr3t-value-1234")
    text = (
        "GET /cgi-bin/token?grant_type=client_credential&secret=abc123&appid=wx1 "
        "POST /cgi-bin/tags/get?access_token=TOKEN_never_seen_here body "
        '{"secret": "xyz789", "access_token":"tok"} and s3cr3t-value-1234 bare'
    )
    masked = redactor.redact(text)
    for leaked in ("abc123", "TOKEN_never_seen_here", "xyz789", '"tok"', "s3cr3t-value-1234"):
        assert leaked not in masked
    assert "appid=wx1" in masked and f"access_token={MASK}" in masked


def _masked_by_one_regex(values: list[str], text: str) -> str:
    """What one regex of every value (longest first) leaves: the reference behaviour."""
    ordered = sorted(set(values), key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in ordered)).sub(MASK, text)


@settings(max_examples=300, deadline=None)
@given(
    base=st.text(alphabet="abAB01_-", min_size=8, max_size=10),
    ends=st.lists(st.text(alphabet="abAB01_-", max_size=5), min_size=1, max_size=4),
    others=st.lists(st.text(alphabet="abAB01_-", min_size=8, max_size=14), max_size=3),
    glue=st.lists(st.text(alphabet='abAB01_- =&"{}.', max_size=6), min_size=1, max_size=8),
    picks=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=8),
)
def test_known_values_are_masked_as_one_regex_of_them_would(
    base: str, ends: list[str], others: list[str], glue: list[str], picks: list[int]
) -> None:
    """Every occurrence, inside longer words too, leftmost and longest first (values that
    share a beginning included)."""
    values = [base + end for end in ends] + others
    redactor = Redactor()
    for value in values:
        redactor.add(value)
    text = "".join(g + values[p % len(values)] for g, p in zip(glue, picks, strict=False))
    masked = redactor.redact(text)
    assert masked == _PARAM.sub(lambda m: m.group("key") + MASK, _masked_by_one_regex(values, text))
    assert not any(v in masked for v in values)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(
            # the names in any case, and characters IGNORECASE matches to their letters
            [
                "access_token",
                "SECRET",
                "AppSecret",
                "refresh_TOKEN",
                "\u017fecret",
                "to\u212aen",
                "access_to\u212aen",
                "=",
                ": ",
                '"',
                "'",
                "&",
                " ",
                "x1",
                "\\",
            ]
        ),
        max_size=12,
    )
)
def test_credential_parameters_are_masked_as_the_regex_alone_would(parts: list[str]) -> None:
    """The cheap look for a credential name first skips no text the regex would mask."""
    text = "".join(parts)
    assert Redactor().redact(text) == _PARAM.sub(lambda m: m.group("key") + MASK, text)


def test_thousands_of_tokens_are_each_masked_and_other_words_kept() -> None:
    """A process of many accounts knows a token per account: each is masked anywhere, in a
    URL, inside a longer word, or with odd characters; words that only share a prefix stay."""
    redactor = Redactor()
    tokens = [f"{i:04d}_ACCESS-token-{i * 7919:08x}" for i in range(3000)]
    for token in tokens:
        redactor.add(token)
    redactor.add("odd.secret/with:colons")
    text = (
        f"call?x={tokens[5]}&y=1 glued{tokens[2999]}glued {tokens[0][:-1]} "
        "odd.secret/with:colons 0001_ACCESS-token-kept"
    )
    masked = redactor.redact(text)
    assert masked == (
        f"call?x={MASK}&y=1 glued{MASK}glued {tokens[0][:-1]} {MASK} 0001_ACCESS-token-kept"
    )


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_log_fields_are_masked_after_rendering_escapes_them(
    log_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known values are masked in the rendered line, not field by field: next to characters
    the renderer escapes (quotes, newlines, non-ASCII, backslashes), nested, or in a key."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(log_format)  # type: ignore[arg-type]
    known = "KnownToken_0123456789abcdef-XYZ"
    odd = "odd secret/with spaces"
    REDACTOR.add(known)
    REDACTOR.add(odd)
    structlog.get_logger("tagsync.test").info(
        "fields",
        quoted=f'"{known}"',
        lines=f"a\n{known}\nb",
        accented=f"\u00e9{known}\u00e9",
        slashed=f"\\{known}\\",
        nested={"list": [f"x{known}y", (odd,)], known: 1},
        url='https://h/p?access_token=never-seen-"quoted&x=1',
        json_like='{"secret": "sec\\"ret"}',
    )
    line = stream.getvalue()
    assert "fields" in line and line.count(MASK) >= 8
    for leaked in (known, odd, "never-seen", "sec\\"):
        assert leaked not in line
    logging.getLogger().handlers.clear()


def test_secret_wrapper_hides_itself() -> None:
    """A Secret shows as *** in repr, str and f-strings."""
    secret = Secret("hunter2-is-not-a-password")
    assert "hunter2" not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == "hunter2-is-not-a-password"


def test_settings_and_client_reprs_hide_the_secret(sim: Sim) -> None:
    """Settings and the client never print the secret."""
    settings = Settings.from_env({"WECHAT_APPID": APPID, "WECHAT_SECRET": SECRET})
    with WeChatClient(appid=APPID, secret=SECRET, api_base=sim.url) as client:
        token = client.tokens.token()
        shown = repr(settings) + repr(client) + repr(client.tokens) + str(vars(client))
    assert SECRET not in shown and token not in shown


def test_network_errors_carry_no_token_or_url_secret() -> None:
    """requests' errors quote the URL with access_token; ours do not, and do not chain it."""
    url = f"http://127.0.0.1:{free_port()}"
    client = WeChatClient(appid=APPID, secret=SECRET, api_base=url, connect_timeout=0.3)
    with client, pytest.raises(NetworkError) as caught:
        client.fetch_token()
    text = _exception_text(caught.value)
    assert SECRET not in text
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_token_never_in_errors_logs_or_reprs(
    sim: Sim, redis_client: redis.Redis, capfd: pytest.CaptureFixture[str]
) -> None:
    """Through success, token errors, timeouts and refused connections, nothing leaks."""
    # Given: JSON logs at DEBUG, every stdlib logger included (urllib3 prints URLs)
    configure_logging("json", level=logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    tokens: list[str] = []
    errors: list[BaseException] = []
    with WeChatClient(
        appid=APPID,
        secret=SECRET,
        api_base=sim.url,
        token_store=RedisTokenStore(redis_client, APPID),
        read_timeout=0.3,
    ) as client:
        # When
        client.list_tags()
        tokens.append(client.tokens.token())
        sim.post("/_sim/expire_tokens")
        client.list_tags()
        tokens.append(client.tokens.token())
        sim.config(timeout_rate=1.0, timeout_hang_s=1.0)
        try:
            client.list_tags()
        except NetworkError as exc:
            errors.append(exc)
        sim.config(timeout_rate=0.0, http500_rate=1.0)
        try:
            client.list_tags()
        except NetworkError as exc:
            errors.append(exc)
        logging.getLogger("tagsync.test").info(
            "url %s", f"{sim.url}/cgi-bin/tags/get?access_token={tokens[-1]}"
        )
        try:
            requests.get(f"http://127.0.0.1:{free_port()}/?access_token={tokens[-1]}", timeout=0.3)
        except requests.RequestException:
            logging.getLogger("tagsync.test").exception("failed")
    # Then
    logged = capfd.readouterr()
    everything = logged.out + logged.err + "".join(_exception_text(e) for e in errors)
    assert len(errors) == 2 and len(set(tokens)) == 2
    assert "tags/get" in logged.err  # the logs were captured, and they are about those calls
    for secret in (SECRET, *tokens):
        assert secret not in everything
    logging.getLogger().handlers.clear()


def test_cli_output_hides_the_secret(
    env: dict[str, str], sim: Sim, redis_client: redis.Redis
) -> None:
    """`tagsync` commands, failing or not, print neither the secret nor a token."""
    command = [sys.executable, "-m", "worker", "tags", "list"]
    # Given: one run that fetches a token and succeeds
    ok = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    stored = redis_client.hget(f"tagsync:{{{APPID}}}:token", "token")
    assert ok.returncode == 0
    assert isinstance(stored, bytes)
    # When: one run that must fetch with a wrong secret
    redis_client.flushall()
    wrong = {**env, "WECHAT_SECRET": SECRET + "-wrong"}
    failed = subprocess.run(command, env=wrong, capture_output=True, text=True, check=False)
    # Then
    assert failed.returncode == 1 and "40125" in failed.stderr
    for result in (ok, failed):
        output = result.stdout + result.stderr
        assert SECRET not in output and stored.decode() not in output
