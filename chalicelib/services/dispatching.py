"""Dispatching: hand free capacity slots to new workers, one per queued task."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from chalicelib import observability, policy
from chalicelib.deps import Service
from chalicelib.domain import Handoff

log = logging.getLogger("pqh")


@dataclass
class DispatchReport:
    free_slots: int = 0
    workers_started: int = 0
    backlog: list[int] = field(default_factory=lambda: [0] * policy.LEVELS)  # the counts per queue


class Dispatching(Service):
    def dispatch(self, full_walk: bool = False) -> DispatchReport:
        """Hand free slots to new workers, one per queued task. Never more than capacity.

        Which task runs next is the worker's choice, so this needs no lock:
        a slot is claimed with a conditional write, so concurrent dispatchers can
        never hold more than ``capacity`` slots between them.
        """
        s = self.settings
        now = self.clock()
        report = DispatchReport()
        slots, shards = self.control.slots_and_backlogs(s.capacity, s.backlog_shards)  # one BatchGetItem
        free = policy.free_slots(slots, s.capacity, now)
        report.free_slots = len(free)
        report.backlog = list(policy.combined(shards).counts)
        if not free:
            return report
        wanted = policy.workers_wanted(len(free), report.backlog, full_walk)
        for slot_id in free:
            if report.workers_started >= wanted:
                break
            holder = uuid.uuid4().hex
            if not self.control.claim_slot(slot_id, holder, now, now + s.lease_seconds):
                observability.metrics.count(observability.SLOT_RACES_LOST)
                continue  # another dispatcher took it
            try:
                # The record of the shard this slot picks from first: its first pick's state.
                home = shards[policy.home_shard(slot_id, s.backlog_shards)]
                self.deps.invoker.start_worker(Handoff(slot_id, holder, full_walk, policy.backlog_to_payload(home)))
            except Exception:
                log.exception("could not start a worker on slot %d; the tasks stay queued", slot_id)
                self.control.release_slot(slot_id, holder)
                break
            report.workers_started += 1
        return report
