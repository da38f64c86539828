"""The split plan (worker.split): calls it costs against every placement of bad openids."""

from __future__ import annotations

import math
import random
import sys
from functools import cache

import pytest

from worker.split import MAX_CALLS, Group, Probe, SplitPlan, Verdict
from worker.wechat.client import MAX_BATCH


def halving_bound(k: int) -> int:
    """G7 (docs/how-it-works.md): what halving costs for k <= 5 bad openids in 50, the first
    call included."""
    return 2 * k * math.ceil(math.log2(MAX_BATCH / k)) + 2 * k + 1


def run_plan(bad: set[int], size: int = MAX_BATCH) -> tuple[int, set[str]]:
    """Drive a plan against a batch whose openids at ``bad`` are refused; (calls, found)."""
    openids = [f"o{i:02d}" for i in range(size)]
    refused = {openids[i] for i in bad}
    plan = SplitPlan.after_refusal(openids, 45059, "has too many tags")
    found: set[str] = set()
    while (step := plan.next_step()) is not None:
        if isinstance(step, Verdict):
            found.add(step.openid)
            plan.settle(step)
        elif refused & set(step.openids):
            found |= set(plan.refused(step, 45059, "has too many tags"))
        else:
            plan.clean(step)
    return plan.calls, found


# An adversary answers each call "refused" or "clean", whichever costs more, as long as some
# placement of k bad openids agrees. The plan only looks at group sizes, suspicion and calls,
# so the game's value over those is the worst case over every placement.


def _shape(plan: SplitPlan) -> tuple[tuple[tuple[int, bool], ...], int]:
    return tuple((len(g.openids), g.suspect) for g in plan.groups), plan.calls


def _rebuild(shape: tuple[tuple[int, bool], ...], calls: int) -> SplitPlan:
    groups, n = [], 0
    for size, suspect in shape:
        groups.append(Group([f"o{n + i}" for i in range(size)], suspect, 45059, ""))
        n += size
    return SplitPlan(groups, calls=calls)


@cache
def worst_case(shape: tuple[tuple[int, bool], ...], calls: int, bad_left: int) -> int:
    plan = _rebuild(shape, calls)
    step = plan.next_step()
    if step is None:
        return calls
    if isinstance(step, Verdict):
        plan.settle(step)
        return worst_case(*_shape(plan), bad_left - 1)
    assert isinstance(step, Probe)
    worst = -1
    for refused in (False, True):
        branch = _rebuild(shape, calls)
        left = bad_left
        if refused:
            left -= len(branch.refused(step, 45059, ""))
        else:
            branch.clean(step)
        suspects = sum(g.suspect for g in branch.groups)
        if suspects <= left <= branch.unsettled:  # some placement agrees
            worst = max(worst, worst_case(*_shape(branch), left))
    return worst


@pytest.fixture(scope="module")
def worst() -> dict[int, int]:
    """The worst case over every placement, for every k from 1 to 50."""
    sys.setrecursionlimit(10_000)
    return {k: worst_case(((MAX_BATCH, True),), 1, k) for k in range(1, MAX_BATCH + 1)}


def test_no_placement_costs_more_than_55_calls(worst: dict[int, int]) -> None:
    """For every k and every placement of k bad openids, a batch of 50 costs at most 55 calls."""
    assert max(worst.values()) <= MAX_CALLS == 55
    # Dense batches cost what one call per openid costs plus the four the cap allows,
    # where halving costs 99.
    assert worst[50] == 55


def test_up_to_three_bad_cost_what_halving_costs_for_every_placement(
    worst: dict[int, int],
) -> None:
    """k = 1, 2, 3: the halving bound holds for every placement."""
    for k in (1, 2, 3):
        assert worst[k] <= halving_bound(k), (k, worst[k])


def test_four_and_five_bad_cost_what_halving_costs_almost_always() -> None:
    """k = 4, 5: within the halving bound for at least 98% of random placements.

    An adversarial placement can make any plan that keeps the 55-call cap spend its four
    spare calls early (see docs/failure-policy.md); the cap then decides.
    """
    rng = random.Random(7)
    for k in (4, 5):
        costs = [run_plan(set(rng.sample(range(MAX_BATCH), k)))[0] for _ in range(2_000)]
        within = sum(c <= halving_bound(k) for c in costs) / len(costs)
        assert within >= 0.98, (k, within)
        assert max(costs) <= MAX_CALLS


@pytest.mark.parametrize("k", [1, 2, 5, 13, 25, 49, 50])
def test_every_bad_openid_is_found_and_no_good_one(k: int) -> None:
    """The plan finds exactly the refused openids, whatever their places."""
    rng = random.Random(k)
    for _ in range(50):
        bad = set(rng.sample(range(MAX_BATCH), k))
        calls, found = run_plan(bad)
        assert found == {f"o{i:02d}" for i in bad}
        assert calls <= MAX_CALLS


def test_a_batch_of_one_is_settled_by_its_own_answer() -> None:
    """A refused batch of one openid is that openid's verdict: no second call."""
    plan = SplitPlan.after_refusal(["a"], 40003, "invalid openid")
    step = plan.next_step()
    assert step == Verdict("a", 40003, "invalid openid")
    plan.settle(step)
    assert plan.done and plan.calls == 1


def test_a_suspect_group_never_goes_out_whole_again() -> None:
    """Once refused, a group is only ever tested in strict parts."""
    rng = random.Random(3)
    for _ in range(200):
        bad = set(rng.sample(range(MAX_BATCH), rng.randint(1, 10)))
        openids = [f"o{i:02d}" for i in range(MAX_BATCH)]
        plan = SplitPlan.after_refusal(openids, 40003, "")
        suspects = [frozenset(openids)]
        while (step := plan.next_step()) is not None:
            if isinstance(step, Verdict):
                plan.settle(step)
                continue
            assert frozenset(step.openids) not in suspects
            if {openids[i] for i in bad} & set(step.openids):
                plan.refused(step, 40003, "")
                if len(step.openids) > 1:
                    suspects.append(frozenset(step.openids))
            else:
                plan.clean(step)


def test_the_plan_survives_json_and_resumes_where_it_stopped() -> None:
    """A plan saved mid-split and loaded again takes the same next step and calls count."""
    openids = [f"o{i:02d}" for i in range(MAX_BATCH)]
    plan = SplitPlan.after_refusal(openids, 49003, "not match openid with appid")
    step = plan.next_step()
    assert isinstance(step, Probe)
    plan.refused(step, 49003, "not match")
    copy = SplitPlan.from_json(plan.to_json())
    assert copy.next_step() == plan.next_step()
    assert (copy.calls, copy.unsettled, copy.credit) == (plan.calls, plan.unsettled, plan.credit)


def test_reconcile_drops_superseded_openids_and_forgets_their_suspicion() -> None:
    """Openids that left the split are forgotten; a suspect group that lost some is untested."""
    plan = SplitPlan([Group(["a", "b", "c"], True, 40003, ""), Group(["d", "e"])], calls=3)
    plan.reconcile(["b", "c", "d", "e", "f"])
    assert [(g.openids, g.suspect) for g in plan.groups] == [
        (["b", "c"], False),
        (["d", "e"], False),
        (["f"], False),
    ]
