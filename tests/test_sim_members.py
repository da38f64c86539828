"""`POST /_sim/members`: big tags fast, and the simulator's tag API at that scale.

These tests add hundreds of thousands of fans, and fans stay across `/_sim/reset`, so they
run against a simulator process of their own, not the session's shared one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fakewechat.openids import prefix_for
from tests.helpers import APPID, FANS, Sim, start_simulator
from worker.runtime.processes import stop_process


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[str]:
    """A simulator process for this module only (its fans grow past a million); the
    conftest's ``sim`` fixture resets it before each test."""
    process, url = start_simulator("--fans", str(FANS))
    yield url
    stop_process(process)


def members(sim: Sim, body: dict[str, Any], **query: str) -> tuple[int, dict[str, Any]]:
    """POST /_sim/members: the HTTP status and the JSON answer, whatever the status."""
    response = sim.http.post(f"{sim.url}/_sim/members", params=query, json=body, timeout=60)
    return response.status_code, response.json()


def total_fans(sim: Sim) -> int:
    return int(sim.get("/_sim/fans", limit=0)["total"])


def create_tag(sim: Sim, token: str, name: str) -> int:
    return int(sim.api("tags/create", {"tag": {"name": name}}, token=token)["tag"]["id"])


def tag_count(sim: Sim, token: str, tag_id: int) -> int:
    tags = sim.api("tags/get", token=token)["tags"]
    return int(next(t["count"] for t in tags if t["id"] == tag_id))


def page(sim: Sim, token: str, tag_id: int, cursor: str = "") -> dict[str, Any]:
    return sim.api("user/tag/get", {"tagid": tag_id, "next_openid": cursor}, token=token)


def every_page(sim: Sim, token: str, tag_id: int, cursor: str = "") -> list[str]:
    """Every openid of ``tag_id`` from ``cursor`` on, page by page, until an empty page."""
    listed: list[str] = []
    while True:
        answer = page(sim, token, tag_id, cursor)
        if not answer["count"]:
            return listed
        listed += answer["data"]["openid"]
        cursor = answer["next_openid"]


def explicit_openid(n: int) -> str:
    """A well-formed openid of the test app that is not one of its deterministic fans."""
    return prefix_for(APPID) + f"membersExplicit{n:07d}"


# -- by count ------------------------------------------------------------------------------


def test_count_adds_new_fans_and_tags_them_all(sim: Sim) -> None:
    """{"tag_id", "count": N} adds N new fans at the end of the fan list, all carrying the tag."""
    # Given: a tag and the app's fans
    token = sim.token()
    tag = create_tag(sim, token, "bulk")
    before = total_fans(sim)
    calls = sim.stats()["calls"]
    # When
    status, first = members(sim, {"tag_id": tag, "count": 5})
    _, second = members(sim, {"tag_id": tag, "count": 3})
    # Then: 8 new fans, continuing the fan sequence, all tagged; no API call counted
    assert status == 200
    assert first == {"added": 5, "count": 5}
    assert second == {"added": 3, "count": 8}
    assert total_fans(sim) == before + 8
    new_fans = sim.fans(8, offset=before)
    assert len(set(new_fans)) == 8
    assert sim.state()["tags"][str(tag)]["fans"] == sorted(new_fans)
    assert sim.stats()["calls"] == calls
    assert tag_count(sim, token, tag) == 8
    assert sim.api("tags/getidlist", {"openid": new_fans[-1]}, token=token)["tagid_list"] == [tag]


def test_appid_names_the_app(sim: Sim) -> None:
    """The app is named by ?appid= or "appid" in the body; an unknown app is 404."""
    # Given: a tag of the (only) app
    tag = create_tag(sim, sim.token(), "app")
    # When
    by_query = members(sim, {"tag_id": tag, "count": 1}, appid=APPID)
    by_body = members(sim, {"tag_id": tag, "count": 1, "appid": APPID})
    unknown = members(sim, {"tag_id": tag, "count": 1}, appid="wxnosuchapp")
    # Then
    assert by_query == (200, {"added": 1, "count": 1})
    assert by_body == (200, {"added": 1, "count": 2})
    assert unknown[0] == 404


# -- by openids ----------------------------------------------------------------------------


def test_openids_tags_fans_and_adds_unknown_ones_as_fans(sim: Sim) -> None:
    """{"tag_id", "openids"} tags those fans, adding the ones the app did not know as fans."""
    # Given: two fans, one of them already tagged, and an openid that is no fan yet
    token = sim.token()
    tag = create_tag(sim, token, "listed")
    known = sim.fans(2, offset=10)
    sim.api("tags/members/batchtagging", {"tagid": tag, "openid_list": known[:1]}, token=token)
    stranger = explicit_openid(1)
    before = total_fans(sim)
    # When: the list names a fan twice
    status, answer = members(sim, {"tag_id": tag, "openids": [*known, stranger, known[1]]})
    # Then: two fans newly tagged; the stranger is a fan now
    assert status == 200
    assert answer == {"added": 2, "count": 3, "skipped": 0}
    assert total_fans(sim) == before + 1
    assert sim.fans(1, offset=before) == [stranger]
    assert sim.state()["tags"][str(tag)]["fans"] == sorted([*known, stranger])
    assert sim.api("tags/getidlist", {"openid": stranger}, token=token)["tagid_list"] == [tag]


def test_openids_skips_fans_that_carry_the_most_tags(sim: Sim) -> None:
    """A fan already at max_tags_per_fan is skipped and counted in "skipped", not refused."""
    # Given: one tag per fan at most, and a fan that carries one
    token = sim.token()
    sim.config(max_tags_per_fan=1)
    full, free = sim.fans(2, offset=20)
    first = create_tag(sim, token, "first")
    second = create_tag(sim, token, "second")
    sim.api("tags/members/batchtagging", {"tagid": first, "openid_list": [full]}, token=token)
    # When
    status, answer = members(sim, {"tag_id": second, "openids": [full, free]})
    # Then
    assert status == 200
    assert answer == {"added": 1, "count": 1, "skipped": 1}
    assert sim.api("tags/getidlist", {"openid": full}, token=token)["tagid_list"] == [first]
    assert sim.api("tags/getidlist", {"openid": free}, token=token)["tagid_list"] == [second]


def test_tagid_count_tags_the_first_fans_of_the_app(sim: Sim) -> None:
    """The older {"tagid", "count": N} tags the app's first N fans and adds none."""
    # Given
    token = sim.token()
    tag = create_tag(sim, token, "legacy")
    before = total_fans(sim)
    # When
    status, answer = members(sim, {"tagid": tag, "count": 3})
    too_many = members(sim, {"tagid": tag, "count": before + 1})
    # Then
    assert (status, answer) == (200, {"added": 3, "count": 3, "skipped": 0})
    assert sim.state()["tags"][str(tag)]["fans"] == sorted(sim.fans(3))
    assert total_fans(sim) == before
    assert too_many[0] == 400 and "over the app's" in too_many[1]["error"]


# -- errors --------------------------------------------------------------------------------


def test_unknown_tag_is_45159_and_adds_nothing(sim: Sim) -> None:
    """A tag the app does not have answers HTTP 400 with errcode 45159, and adds no fan."""
    # Given
    before = total_fans(sim)
    # When
    by_count = members(sim, {"tag_id": 999, "count": 10})
    by_openids = members(sim, {"tag_id": 2, "openids": [explicit_openid(2)]})
    # Then
    for status, answer in (by_count, by_openids):
        assert status == 400
        assert answer["errcode"] == 45159
    assert total_fans(sim) == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"tag_id": "TAG", "count": 0}, "count must be 1 to 2,000,000"),
        ({"tag_id": "TAG", "count": 2_000_001}, "count must be 1 to 2,000,000"),
        ({"tag_id": "TAG", "count": True}, "count must be an integer"),
        ({"tag_id": "TAG", "count": "5"}, "count must be an integer"),
        ({"tag_id": "TAG", "count": 1.5}, "count must be an integer"),
        ({"tag_id": True, "count": 1}, "tag_id must be an integer"),
        ({"count": 1}, "give the tag as tag_id"),
        ({"tag_id": "TAG"}, "give exactly one of count"),
        (
            {"tag_id": "TAG", "count": 1, "openids": []},
            "give exactly one of count",
        ),
        ({"tag_id": "TAG", "openids": "o1"}, "openids must be a list of strings"),
        ({"tag_id": "TAG", "openids": [1]}, "openids must be a list of strings"),
        ({"tag_id": "TAG", "openids": ["not-an-openid"]}, "not an openid of this AppID"),
        ({"tag_id": "TAG", "openids": ["FOREIGN"]}, "not an openid of this AppID"),
        ({"tag_id": "TAG", "count": 1, "fans": 2}, "unknown keys ['fans']"),
    ],
)
def test_bad_input_is_400_with_a_message(sim: Sim, body: dict[str, Any], says: str) -> None:
    """Bad counts, tag ids, openids or keys answer HTTP 400 naming the problem; nothing changes."""
    # Given: a tag (TAG in the body) and a foreign openid (FOREIGN)
    token = sim.token()
    tag = create_tag(sim, token, "t")
    foreign = sim.foreign(1)[0]
    body = {k: tag if v == "TAG" else v for k, v in body.items()}
    if body.get("openids") == ["FOREIGN"]:
        body["openids"] = [foreign]
    before = total_fans(sim)
    # When
    status, answer = members(sim, body)
    # Then
    assert status == 400
    assert says in answer["error"]
    assert total_fans(sim) == before
    assert tag_count(sim, token, tag) == 0


def test_members_is_post_only_and_needs_a_json_object(sim: Sim) -> None:
    """GET /_sim/members is 404; a body that is not a JSON object is 400."""
    # Given / When
    get = sim.http.get(f"{sim.url}/_sim/members", timeout=10)
    listed = sim.http.post(f"{sim.url}/_sim/members", json=[1, 2], timeout=10)
    # Then
    assert get.status_code == 404
    assert listed.status_code == 400


# -- at scale ------------------------------------------------------------------------------


def test_delete_is_45057_over_100000_fans_and_allowed_at_100000(sim: Sim) -> None:
    """tags/delete refuses a tag of 100,001 fans (45057) and deletes it at 100,000."""
    # Given: a tag of 100,001 new fans
    token = sim.token()
    tag = create_tag(sim, token, "huge")
    before = total_fans(sim)
    assert members(sim, {"tag_id": tag, "count": 100_001}) == (
        200,
        {"added": 100_001, "count": 100_001},
    )
    # When: deleting it, then again after untagging one fan through the API
    refused = sim.api("tags/delete", {"tag": {"id": tag}}, token=token)
    one = sim.fans(1, offset=before + 100_000)
    untagged = sim.api(
        "tags/members/batchuntagging", {"tagid": tag, "openid_list": one}, token=token
    )
    count_after = tag_count(sim, token, tag)
    deleted = sim.api("tags/delete", {"tag": {"id": tag}}, token=token)
    # Then
    assert refused["errcode"] == 45057
    assert untagged["errcode"] == 0
    assert count_after == 100_000
    assert deleted["errcode"] == 0
    assert sim.api("tags/get", token=token)["tags"] == []
    assert sim.api("tags/getidlist", {"openid": one[0]}, token=token)["tagid_list"] == []


def test_paging_continues_after_the_cursor_when_fans_are_untagged_between_pages(
    sim: Sim,
) -> None:
    """Fans untagged between pages are not listed; none is listed twice and none is skipped."""
    # Given: 25 fans on a tag, pages of 10, and the full listing taken beforehand
    token = sim.token()
    sim.config(page_size=10)
    tag = create_tag(sim, token, "paged")
    members(sim, {"tag_id": tag, "count": 25})
    full = every_page(sim, token, tag)
    assert len(full) == len(set(full)) == 25
    # When: after the first page, the cursor's fan, a listed fan and two fans not yet
    # listed are untagged, and one new fan is tagged
    first = page(sim, token, tag)
    assert first["data"]["openid"] == full[:10] and first["next_openid"] == full[9]
    gone = [full[9], full[3], full[12], full[20]]
    for openid in gone:
        sim.api("tags/members/batchuntagging", {"tagid": tag, "openid_list": [openid]}, token=token)
    members(sim, {"tag_id": tag, "count": 1})
    newcomer = sim.fans(1, offset=total_fans(sim) - 1)[0]
    rest = every_page(sim, token, tag, first["next_openid"])
    # Then: the walk goes on right after the cursor, without the fans untagged since
    assert rest == [o for o in full[10:] if o not in gone] + [newcomer]
    walked = first["data"]["openid"] + rest
    assert len(walked) == len(set(walked))
    assert tag_count(sim, token, tag) == 25 - 4 + 1


@pytest.mark.slow
def test_a_tag_of_a_million_fans(sim: Sim) -> None:
    """members adds a 1,000,000-fan tag at once; its 100 pages list every fan exactly once."""
    # Given
    token = sim.token()
    tag = create_tag(sim, token, "million")
    # When
    started = time.monotonic()
    status, answer = members(sim, {"tag_id": tag, "count": 1_000_000})
    took = time.monotonic() - started
    listed = every_page(sim, token, tag)
    # Then: seconds at most (a few milliseconds here); pages of 10,000
    assert status == 200 and answer == {"added": 1_000_000, "count": 1_000_000}
    assert took < 5, f"members count=1,000,000 took {took:.1f}s"
    assert len(listed) == len(set(listed)) == 1_000_000
    assert tag_count(sim, token, tag) == 1_000_000
    assert sim.api("tags/delete", {"tag": {"id": tag}}, token=token)["errcode"] == 45057
