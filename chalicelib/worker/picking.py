"""Picking: choose the next tasks by the policy, take them off the counts in one write, receive them."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import NamedTuple

from chalicelib import observability, policy
from chalicelib.deps import Deps, Service
from chalicelib.domain import QueuedMessage

log = logging.getLogger("pqh")

# Finished tasks by outcome (policy.TALLIES), not yet added to the backlog record's totals.
Tallies = tuple[int, ...]
NO_TALLIES: Tallies = (0,) * len(policy.TALLIES)


class Picked(NamedTuple):
    """One task a pick took: its queue, its message, the backlog record after the pick, whether it took a count,
    and the backlog shard it was counted in."""

    queue: int  # the queue it came from: its priority level, or 0 for every level under fifo
    message: QueuedMessage
    backlog: policy.Backlog
    counted: bool  # False for the tick's walk over uncounted messages
    shard: int = 0  # whose count it took (policy/shards.py); ``backlog`` is that shard's record


class Picker(Service):
    """One worker's picks. ``missed`` remembers a pick that found fewer messages than it counted:
    before stopping, the worker then walks every queue itself. ``read_first`` remembers that
    other workers' picks move the record between this worker's picks (below)."""

    def __init__(self, deps: Deps, shard: int = 0) -> None:
        super().__init__(deps)
        self.missed = False
        self.read_first = False
        # The backlog shard this worker picks from: its slot's at first, then wherever its
        # last pick was (policy/shards.py). Always 0 with one shard.
        self.shard = shard
        self._turn = shard  # which other shard it compares with next

    def pick(
        self,
        backlog: policy.Backlog | None,
        full_walk: bool,
        last_run: float | None = None,
        tallies: Tallies = NO_TALLIES,
        most: int = 1,
    ) -> tuple[list[Picked], Tallies]:
        """Choose up to ``most`` tasks by the policy, take them off the counts in one write, then receive them.

        In the order the policy runs them; empty when nothing is left. ``tallies``
        ride on the pick's write; what comes back is what was not written.
        """
        s = self.settings
        state, cached = self._state_to_choose_from(backlog)
        # Weights order the users inside a level under every policy but the two plain ones.
        sample = s.fair_sample if s.policy in ("fair", "priority") else 1
        while True:
            if policy.choose_level(state, s.policy, s.floor_picks) is None:
                found = self._most_urgent_shard()
                if found is None:
                    break
                state, cached = found, False
            share = policy.batch_share(state.counts, max(1, s.capacity // s.backlog_shards))
            levels, after = policy.plan_picks(state, min(most, share), s.policy, s.shares, s.floor_picks)
            if not levels:
                break
            # The pick's write also carries the levels' recent arrival rates (for ETAs).
            after = policy.with_arrival_rates(after, self.clock())
            if last_run is not None:  # this slot's last seconds per task, for ETAs
                after = replace(after, run_seconds=policy.moving_average(state.run_seconds, last_run))
            takes = {level: levels.count(level) for level in levels}
            taken, state = self.backlog_shard(self.shard).commit_pick(state, after, takes, tuple(tallies))
            if not taken:
                observability.metrics.count(observability.PICK_RACES_LOST)
                # The state moved (a submit, or another worker's pick): choose again from
                # the record the failed write returned. Lost on the record this worker
                # kept from its last pick: other workers pick in between, so read first.
                self.read_first = self.read_first or cached
                cached = False
                continue
            cached = False
            tallies = NO_TALLIES
            received: dict[int, list[QueuedMessage]] = {}
            try:
                for level, n in takes.items():
                    received[level] = self._receive_for(level, n, sample)
            except Exception:
                # None of this pick will run here: what it received goes back, and
                # every count it took (a message received and lost in the failing
                # call comes back after its visibility timeout, counted again).
                self._undo_pick(takes, received)
                raise
            # In the policy's order: a level's n-th turn runs its n-th chosen message.
            picks = [
                Picked(level, received[level].pop(0), state, True, self.shard) for level in levels if received[level]
            ]
            if picks:
                return picks, tallies
        walk = full_walk or self.missed
        self.missed = False
        if walk:
            # The tick also looks at queues counted empty, for messages the counts
            # missed (a fault between send and count, or a message SQS redelivered);
            # so does a worker whose pick found nothing, rather than leave it to the tick.
            for level in range(policy.LEVELS):
                messages = self.queues.receive(level, 1, wait_seconds=0)
                if messages:
                    self.missed = True  # there may be more: walk again before stopping
                    return [Picked(level, messages[0], state, False, self.shard)], tallies
        return [], tallies

    def _state_to_choose_from(self, backlog: policy.Backlog | None) -> tuple[policy.Backlog, bool]:
        """The backlog record to choose from, and whether it is the one kept from the last pick.

        The record a worker's last pick returned is a task old. Where other workers
        picked since (its version moved on), a write chosen from it fails its condition
        and costs a write unit of the record's budget, and a round trip, to learn the
        current state. A consistent read costs a read unit (the item's read budget is
        three times its write budget) and the same round trip. So a worker whose pick
        lost on a kept record reads first, for as long as its reads find the version
        moved on; one alone (its reads find its own version) goes back to its kept
        record, and pays nothing. The policy is applied exactly either way: the pick's
        write still holds only if the version it chose from is the current one.
        """
        s = self.settings
        if s.backlog_shards > 1:
            return self._own_or_other_shard(), False
        control = self.backlog_shard(self.shard)
        if backlog is None:
            return control.backlog(), False
        if self.read_first:
            state = control.backlog()
            self.read_first = state.version != backlog.version
            return state, False
        if policy.choose_level(backlog, s.policy, s.floor_picks) is None:
            return control.backlog(), False  # the record predates the last task: look again
        return backlog, True

    def _own_or_other_shard(self) -> policy.Backlog:
        """With several shards: this worker's shard, or the other it looks at this turn if that one's
        most urgent queued level is more urgent (one BatchGetItem of the two).

        Each other shard comes in turn, so a more urgent task anywhere is seen by every
        worker within N of its picks (by the first of C workers far sooner), while
        workers do not all crowd onto one shard and race there. Both empty: the pick
        reads every shard (``_most_urgent_shard``).
        """
        s = self.settings
        other = policy.other_shard(self.shard, self._turn, s.backlog_shards)
        self._turn += 1
        own_state, other_state = self.control.backlogs_of([self.shard, other])
        own_top = policy.highest_backlogged(own_state.counts)
        other_top = policy.highest_backlogged(other_state.counts)
        if other_top is not None and (own_top is None or other_top < own_top):
            self.shard, self.read_first = other, False
            return other_state
        return own_state

    def _most_urgent_shard(self) -> policy.Backlog | None:
        """With several shards, once this worker's has nothing to pick: every shard in one
        BatchGetItem, and the record of the one with the most urgent work (None when none has any).

        So no shard's tasks wait while a worker is free.
        """
        s = self.settings
        if s.backlog_shards == 1:
            return None
        states = self.control.backlogs(s.backlog_shards)
        chosen = policy.shard_to_pick(states, self.shard)
        if chosen is None:
            return None
        self.shard, self.read_first = chosen, False
        return states[chosen]

    def put_back(self, picks: list[Picked]) -> None:
        """Picked tasks that will not run here: their messages visible again, their counts back.

        Every queue is tried even if one fails (the first error is raised after):
        a message not given back returns after its visibility timeout, uncounted,
        and the tick's walk finds it.
        """
        s = self.settings
        by_level: dict[int, list[Picked]] = {}
        for pick in picks:
            by_level.setdefault(pick.queue, []).append(pick)
        errors: list[Exception] = []
        for level, group in by_level.items():
            try:
                self.queues.give_back(level, [pick.message.receipt_handle for pick in group])
            except Exception as exc:
                errors.append(exc)
                continue
            counted: dict[int, int] = {}  # by the shard each count was taken from
            for pick in group:
                if pick.counted:
                    counted[pick.shard] = counted.get(pick.shard, 0) + 1
            for shard, n in sorted(counted.items()):
                try:
                    self.backlog_shard(shard).add_backlog(level, n)
                except Exception as exc:
                    errors.append(exc)
            log.info("put back %d tasks of level %d (held, not run)", len(group), level)
            for pick in group:
                message = pick.message
                priority_level = None if s.policy == "fifo" else level  # every level shares queue 0 under fifo
                observability.task_event("given back", message.task_id, message.user_id, priority_level, queue=level)
            observability.metrics.count(observability.TASKS_GIVEN_BACK, value=len(group))
        if errors:
            raise errors[0]

    def _receive_for(self, level: int, n: int, sample: int) -> list[QueuedMessage]:
        """The ``n`` messages of a queue a pick counted: the best ``n`` of up to ``n + sample - 1`` received.

        One receive, so at most ten: a single task is the best of PQH_FAIR_SAMPLE,
        five tasks the best five of ten, ten tasks whatever ten SQS returns (run
        smallest tag first). A second receive for a wider sample cost 0.2 requests
        per task under the bench's backlog, for an order inside one level that a
        sample of a deep level only approximates anyway.
        """
        want = min(policy.MAX_BATCH, n + sample - 1)
        messages = list(self.queues.receive(level, want, wait_seconds=0))
        if len(messages) < n:
            # A short poll samples some SQS servers, so it may return fewer messages
            # than are there (none, or a few of a small queue); a long poll asks them
            # all. Still short: the count was ahead of the queue, and this pick has
            # corrected it. Or the messages were in another worker's sample, about to
            # be given back: then they are queued but no longer counted, and the walk
            # before this worker stops finds them.
            messages += self.queues.receive(level, want - len(messages), wait_seconds=1)
        if len(messages) < n:
            self.missed = True
        return self._some_of(level, messages, n)

    def _undo_pick(self, takes: dict[int, int], received: dict[int, list[QueuedMessage]]) -> None:
        """A pick whose receives failed part-way: its messages visible again, its counts back (best effort)."""
        for level, n in takes.items():
            with contextlib.suppress(Exception):
                if received.get(level):
                    self.queues.give_back(level, [m.receipt_handle for m in received[level]])
            with contextlib.suppress(Exception):
                self.backlog_shard(self.shard).add_backlog(level, n)

    def _some_of(self, level: int, messages: list[QueuedMessage], n: int) -> list[QueuedMessage]:
        """Fairness inside a level: of the sampled messages, the ``n`` whose users had used least, in order."""
        if len(messages) <= 1:
            return messages
        chosen = policy.pick_within_level_many([(m.tag, m.submitted_at) for m in messages], n)
        kept = set(chosen)
        rest = [m.receipt_handle for i, m in enumerate(messages) if i not in kept]
        if rest:
            self.queues.give_back(level, rest)
        return [messages[i] for i in chosen]
