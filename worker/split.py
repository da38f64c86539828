"""Finding the bad openids of a batch WeChat refused (40003, 49003, 45059) with few calls.

WeChat applies nothing of a batch when one openid is bad, and does not say which one, so
a refused batch is tested in parts (group testing). The plan here is a list of groups:
``suspect`` groups hold at least one bad openid (an answer said so), the others are
untested. Each step tests a part of one group; the answer settles it:

- clean: the part is applied; if its group was suspect and the part was not all of it,
  the rest of the group is suspect (a bad one must be there), and a suspect group of one
  openid is bad without another call;
- refused: the part becomes suspect (a single openid is bad: dead-letter it) and the rest
  of its group is untested.

How big a part is depends on the *credit*: ``MAX_CALLS - calls - unsettled``. If every
openid left were bad, one call per openid would still finish within ``MAX_CALLS``
(55); a refused part of two or more openids costs one unit of credit, a clean part of m
openids earns m - 1. Parts are tested only while credit remains, so no batch ever costs
more than 55 calls (a batch of 50 bad fans costs at most 55, where halving costs 99).
While credit is plentiful the plan halves (few bad openids cost what halving costs:
2k*ceil(log2(50/k)) + 2k + 1 calls for k <= 5 in all but about 1% of placements, see
docs/failure-policy.md); as credit runs low it tests smaller parts, which a sparse batch
mostly answers clean (earning credit back) and a dense one shows to be dense at little cost.

The plan is plain data (``to_json``/``from_json``), kept in Redis with the tag, so a split
that must wait for a call slot, a pause or a backoff resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker.wechat.client import MAX_BATCH

#: Most calls one batch of 50 may cost in all, the first refused call included.
MAX_CALLS = MAX_BATCH + 5
#: Credit below which a suspect group is tested in quarters, then eighths (else halves).
SUSPECT_CAUTION = (4, 2)
#: Credit below which an untested group is tested in halves, then quarters (else whole).
UNTESTED_CAUTION = (5, 3)


@dataclass
class Group:
    """Openids of a batch still to settle; ``suspect`` when an answer said one is bad."""

    openids: list[str]
    suspect: bool = False
    #: The errcode and errmsg of the answer that made the group suspect.
    errcode: int | None = None
    errmsg: str = ""


@dataclass(frozen=True)
class Probe:
    """The next call of a split: the first ``size`` openids of group ``group``."""

    group: int
    openids: list[str]


@dataclass(frozen=True)
class Verdict:
    """A bad openid found without a call: the last of a suspect group."""

    openid: str
    errcode: int | None
    errmsg: str


@dataclass
class SplitPlan:
    """The state of one batch's split: its groups and the calls spent so far."""

    groups: list[Group]
    calls: int = 0
    #: Openids found bad so far (k, which docs/failure-policy.md measures the calls against).
    bad: int = 0

    @classmethod
    def after_refusal(cls, openids: list[str], errcode: int | None, errmsg: str) -> SplitPlan:
        """The plan once a whole batch was refused (that call counts)."""
        return cls([Group(list(openids), True, errcode, errmsg)], calls=1)

    @property
    def unsettled(self) -> int:
        """Openids not yet applied or found bad."""
        return sum(len(g.openids) for g in self.groups)

    @property
    def credit(self) -> int:
        """Calls to spare beyond one call per unsettled openid, within ``MAX_CALLS``."""
        return MAX_CALLS - self.calls - self.unsettled

    @property
    def done(self) -> bool:
        """True once every openid is settled."""
        return not self.groups

    def next_step(self) -> Probe | Verdict | None:
        """What to do next: a call (``Probe``), a deduced bad openid, or None when done."""
        for group in self.groups:
            if group.suspect and len(group.openids) == 1:
                return Verdict(group.openids[0], group.errcode, group.errmsg)
        if not self.groups:
            return None
        credit = self.credit
        if credit < 1:
            # No part may be refused any more: one openid at a time. A small suspect group
            # first, since its last openid may come free and earn a unit of credit back.
            suspects = [i for i, g in enumerate(self.groups) if g.suspect]
            if suspects:
                index = min(suspects, key=lambda i: len(self.groups[i].openids))
            else:
                index = len(self.groups) - 1
            return Probe(index, self.groups[index].openids[:1])
        # Untested groups first: the part a refused test left over is mostly clean when
        # bad openids are few, and a clean answer earns credit.
        untested = [i for i, g in enumerate(self.groups) if not g.suspect]
        index = untested[-1] if untested else len(self.groups) - 1
        group = self.groups[index]
        size = len(group.openids)
        if group.suspect:
            size >>= 1 + sum(credit < threshold for threshold in SUSPECT_CAUTION)
        else:
            size >>= sum(credit < threshold for threshold in UNTESTED_CAUTION)
        return Probe(index, group.openids[: max(1, size)])

    def clean(self, probe: Probe) -> None:
        """WeChat applied the probe's openids."""
        self.calls += 1
        group = self.groups.pop(probe.group)
        rest = group.openids[len(probe.openids) :]
        if rest:
            # A suspect group's bad openid is in the rest; an untested rest stays untested.
            self.groups.insert(probe.group, Group(rest, group.suspect, group.errcode, group.errmsg))

    def refused(self, probe: Probe, errcode: int | None, errmsg: str) -> list[str]:
        """WeChat refused the probe; return the openid found bad, if the probe was one."""
        self.calls += 1
        group = self.groups.pop(probe.group)
        rest = group.openids[len(probe.openids) :]
        found: list[str] = []
        if rest:
            self.groups.insert(probe.group, Group(rest))
        if len(probe.openids) == 1:
            found = list(probe.openids)
            self.bad += 1
        else:
            self.groups.append(Group(list(probe.openids), True, errcode, errmsg))
        return found

    def settle(self, verdict: Verdict) -> None:
        """A deduced bad openid was dead-lettered."""
        self.bad += 1
        self.forget([verdict.openid])

    def forget(self, openids: list[str]) -> None:
        """Drop openids settled elsewhere (superseded by a newer intent, dead-lettered)."""
        gone = set(openids)
        kept = []
        for group in self.groups:
            left = [o for o in group.openids if o not in gone]
            if not left:
                continue
            if len(left) < len(group.openids) and group.suspect:
                # The bad openid may have been among those dropped: test the rest afresh.
                group = Group(left)
            else:
                group.openids = left
            kept.append(group)
        self.groups = kept

    def reconcile(self, openids: Iterable[str]) -> None:
        """Make the plan cover exactly ``openids``: the split's openids as Redis holds them.

        Fans that got a newer intent left the split meanwhile; an openid the plan does not
        know (never expected) is tested afresh.
        """
        present = list(openids)
        keep = set(present)
        self.forget([o for g in self.groups for o in g.openids if o not in keep])
        known = {o for g in self.groups for o in g.openids}
        missing = [o for o in present if o not in known]
        if missing:
            self.groups.append(Group(missing))

    def to_json(self) -> str:
        """The plan as JSON (kept in Redis with the tag)."""
        return json.dumps(
            {
                "calls": self.calls,
                "bad": self.bad,
                "groups": [[g.openids, g.suspect, g.errcode, g.errmsg] for g in self.groups],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SplitPlan:
        """A plan saved by ``to_json``."""
        doc: dict[str, Any] = json.loads(text)
        groups = [Group(list(o), bool(s), c, str(m)) for o, s, c, m in doc["groups"]]
        return cls(groups, calls=int(doc["calls"]), bad=int(doc.get("bad", 0)))
