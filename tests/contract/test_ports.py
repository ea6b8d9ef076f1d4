"""One suite, several implementations: the in-memory fakes, the adapters on moto, the
DynamoDB adapters on dynalite (the local runner's DynamoDB emulator; SQS on moto), and
for the queue cases the SQS adapter on LocalStack's runtime (a second, independent
SQS that checks parameters as AWS documents them, e.g. MessageGroupId on standard
queues, which moto accepts whatever it holds).

If a fake drifts from what the AWS adapter does, or an emulator from the other,
this suite fails for one of them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from moto import mock_aws

from chalicelib import aws, policy, top_users
from chalicelib.adapters.dynamo import DynamoControlStore, DynamoTaskStore, DynamoUsageStore
from chalicelib.adapters.memory import MemoryControlStore, MemoryTaskQueues, MemoryTaskStore, MemoryUsageStore
from chalicelib.adapters.sqs import SqsTaskQueues
from chalicelib.domain import FAILURE, PENDING, STARTED, SUCCESS, Task
from chalicelib.policy import Backlog
from chalicelib.ports import ALREADY_FINISHED, MISSING, RUNNING_ELSEWHERE, STARTED_NOW, QueuedLimitError
from infra.provision import provision, teardown

PREFIX = "pqh-contract"
NOW = 2_000_000_000.0


@dataclass
class Ports:
    usage: Any
    tasks: Any
    queues: Any
    control: Any


@pytest.fixture(scope="session")
def dynalite_url() -> Iterator[str]:
    """One dynalite process for the session; each test gets tables of its own."""
    from local.emulator import DynaliteServer
    from local.process import free_port

    server = DynaliteServer("127.0.0.1", free_port())
    server.start(timeout=30)
    try:
        yield server.url
    finally:
        server.stop()


def _ports(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ports]:
    # "moto-spread": the task store with its index keys spread over four backlog shards
    # (PQH_BACKLOG_SHARDS=4): every contract holds the same.
    spread = 4 if kind.endswith("-spread") else 1
    kind = kind.removesuffix("-spread")
    if kind == "memory":
        yield Ports(MemoryUsageStore(), MemoryTaskStore(), MemoryTaskQueues(clock=time.time), MemoryControlStore())
        return
    prefix = PREFIX
    if kind in ("dynalite", "localstack"):
        # An endpoint for DynamoDB alone: it bypasses moto's mock, which keeps SQS.
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", request.getfixturevalue("dynalite_url"))
        prefix = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    if kind == "localstack":
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", request.getfixturevalue("localstack").endpoint("sqs"))
    aws.reset()
    with mock_aws():
        dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
        provision(prefix, dynamodb, sqs)
        try:
            yield Ports(
                DynamoUsageStore(dynamodb, f"{prefix}-usage"),
                DynamoTaskStore(dynamodb, f"{prefix}-tasks", index_shards=spread),
                SqsTaskQueues(sqs, lambda level: f"{prefix}-level-{level}"),
                DynamoControlStore(dynamodb, f"{prefix}-control"),
            )
        finally:
            if kind == "localstack":  # one LocalStack serves the whole session
                teardown(prefix, dynamodb, sqs)
    aws.reset()


@pytest.fixture(params=["memory", "moto", "dynalite", "moto-spread"])
def ports(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ports]:
    yield from _ports(request.param, request, monkeypatch)


@pytest.fixture(params=["memory", "moto", "localstack"])
def queue_ports(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ports]:
    """For the cases of the queue port alone: SQS on moto and on LocalStack (dynalite would repeat moto's SQS)."""
    yield from _ports(request.param, request, monkeypatch)


def make_task(task_id: str = "11111111-1111-4111-8111-111111111111", x: Any = "foo") -> Task:
    return Task(
        task_id=task_id,
        user_id="u1",
        x=x,
        priority_level=3,
        submitted_at=NOW + 0.125,
        expires_at=int(NOW) + 3600,
        tag=2.5,
    )


# --- usage ------------------------------------------------------------------


def test_record_submission_returns_the_count_before_and_the_weight(ports: Ports) -> None:
    got = [ports.usage.record_submission("u1", NOW, 600, 6000) for _ in range(3)]
    assert got == [(0, 1), (1, 1), (2, 1)]
    ports.usage.set_weight("u1", 4, NOW, 600, 6000)
    assert ports.usage.record_submission("u1", NOW + 1, 600, 6000) == (3, 4)
    assert ports.usage.usage("u1", NOW + 1, 600, 6000) == (4, 4)
    assert ports.usage.usage("someone-else", NOW, 600, 6000) == (0, 1)


def test_counts_across_buckets_and_expired_buckets_count_as_zero(ports: Ports) -> None:
    ports.usage.record_submission("u1", NOW, 600, 6000)
    ports.usage.record_submission("u1", NOW + 1200, 600, 6000)
    assert ports.usage.record_submission("u1", NOW + 3000, 600, 6000) == (2, 1)
    # 6700 s later the first bucket has expired (moto, like a late DynamoDB, still holds it).
    assert ports.usage.usage("u1", NOW + 6700, 600, 6000) == (2, 1)
    assert ports.usage.usage("u1", NOW + 20000, 600, 6000) == (0, 1)
    assert ports.usage.record_submission("u1", NOW + 20000, 600, 6000) == (0, 1)


def test_a_weight_set_before_a_users_first_submission_or_while_counting_applies(ports: Ports) -> None:
    ports.usage.set_weight("new", 3, NOW, 600, 6000)
    assert ports.usage.record_submission("new", NOW, 600, 6000) == (0, 3)
    ports.usage.set_weight("new", 5, NOW, 600, 6000)
    assert ports.usage.record_submission("new", NOW + 1, 600, 6000) == (1, 5)
    assert ports.usage.usage("new", NOW + 1, 600, 6000) == (2, 5)
    # Long idle: the counters have left the window; the weight stays.
    assert ports.usage.record_submission("new", NOW + 50_000, 600, 6000) == (0, 5)


def expire_like_dynamodb(ports: Ports, now: float) -> int:
    """Delete the usage items whose TTL has passed, as DynamoDB's TTL would (moto and dynalite never do)."""
    if not isinstance(ports.usage, DynamoUsageStore):
        return 0  # the fake keeps weights apart from its buckets: nothing of a user's expires with them
    db, table = ports.usage._db, ports.usage._table
    gone = 0
    for item in db.scan(TableName=table)["Items"]:
        if "expires_at" in item and float(item["expires_at"]["N"]) <= now:
            db.delete_item(TableName=table, Key={"user_id": item["user_id"], "sk": item["sk"]})
            gone += 1
    return gone


def test_a_weight_outlives_the_users_counters_expiring(ports: Ports) -> None:
    ports.usage.set_weight("vip", 4, NOW, 600, 6000)
    ports.usage.set_weight("back-to-one", 3, NOW, 600, 6000)
    for user in ("vip", "back-to-one", "plain"):
        assert ports.usage.record_submission(user, NOW, 600, 6000)[0] == 0
    ports.usage.set_weight("back-to-one", 1, NOW + 1, 600, 6000)
    later = NOW + 20_000  # every bucket has left the window, and TTL has run
    gone = expire_like_dynamodb(ports, later)
    if isinstance(ports.usage, DynamoUsageStore):
        assert gone == 2  # the counters of the users with weight 1 went; the weighted one's stayed
    assert ports.usage.record_submission("vip", later, 600, 6000) == (0, 4)
    assert ports.usage.record_submission("back-to-one", later, 600, 6000) == (0, 1)
    assert ports.usage.record_submission("plain", later, 600, 6000) == (0, 1)
    assert ports.usage.usage("vip", later, 600, 6000) == (1, 4)


def test_a_submission_is_one_dynamodb_request_even_for_a_new_or_weighted_user(ports: Ports) -> None:
    if not isinstance(ports.usage, DynamoUsageStore):
        pytest.skip("counts DynamoDB requests")
    ports.usage.set_weight("vip", 4, NOW, 600, 6000)
    calls: list[str] = []
    events = ports.usage._db.meta.events
    unique = f"count-{uuid.uuid4().hex}"
    events.register("before-call.dynamodb.*", lambda model, **kw: calls.append(model.name), unique_id=unique)
    try:
        assert ports.usage.record_submission("newcomer", NOW, 600, 6000) == (0, 1)
        assert ports.usage.record_submission("vip", NOW, 600, 6000) == (0, 4)
        assert ports.usage.record_submission("newcomer", NOW + 1, 600, 6000) == (1, 1)
        # The weight has one home, so a weight is one write, and no read can disagree.
        ports.usage.set_weight("vip", 2, NOW + 1, 600, 6000)
        ports.usage.set_weight("newcomer", 1, NOW + 1, 600, 6000)
    finally:
        events.unregister("before-call.dynamodb.*", unique_id=unique)
    assert calls == ["UpdateItem"] * 5
    assert ports.usage.usage("vip", NOW + 1, 600, 6000) == (1, 2)
    for user in ("vip", "newcomer"):
        ports.usage.note_top_user(user, 1, NOW + 1, 6000)
    listed = {u.user_id: u.weight for u in ports.usage.top_users(NOW + 1, 600, 6000, 5)}
    assert listed == {"vip": 2, "newcomer": 1}


def test_a_user_who_comes_back_now_and_then_is_counted_right_and_stays_small(ports: Ports) -> None:
    now = NOW
    for _ in range(60):
        now += 2 * 6600  # out of the window each time, and past the buckets each write sweeps
        assert ports.usage.record_submission("sparse", now, 600, 6000) == (0, 1)
        assert ports.usage.record_submission("sparse", now + 700, 600, 6000) == (1, 1)
    assert ports.usage.usage("sparse", now + 700, 600, 6000) == (2, 1)
    if isinstance(ports.usage, DynamoUsageStore):
        item = ports.usage._db.get_item(
            TableName=ports.usage._table, Key={"user_id": {"S": "sparse"}, "sk": {"S": "u"}}
        )["Item"]
        assert sum(1 for name in item if name.startswith("b")) <= 12  # stale buckets are swept


# --- tasks ------------------------------------------------------------------


@pytest.mark.parametrize("x", ["foo", None, 0, 1.5, [1, "two", {"three": 3}], {"nested": {"ü": "✓"}}, True, ""])
def test_a_task_round_trips_with_any_json_payload(ports: Ports, x: Any) -> None:
    task = make_task(x=x)
    ports.tasks.create(task)
    assert ports.tasks.get(task.task_id) == task
    assert ports.tasks.get("22222222-2222-4222-8222-222222222222") is None


def test_start_then_finish_once(ports: Ports) -> None:
    task = make_task()
    ports.tasks.create(task)
    outcome, started = ports.tasks.start(task.task_id, "run-a", NOW, NOW + 300)
    assert outcome == STARTED_NOW and started is not None
    assert (started.task_status, started.started_at, started.attempts, started.x) == (STARTED, NOW, 1, "foo")
    assert ports.tasks.start(task.task_id, "run-b", NOW + 1, NOW + 301)[0] == RUNNING_ELSEWHERE
    assert not ports.tasks.finish(task.task_id, "run-b", SUCCESS, NOW + 2, NOW + 1000, result={"r": 1})
    assert ports.tasks.finish(task.task_id, "run-a", SUCCESS, NOW + 2, NOW + 1000, result={"r": 1})
    assert not ports.tasks.finish(task.task_id, "run-a", FAILURE, NOW + 3, NOW + 1000, error="late")
    final = ports.tasks.get(task.task_id)
    assert (final.task_status, final.result, final.finished_at, final.error) == (SUCCESS, {"r": 1}, NOW + 2, None)
    assert final.expires_at == int(NOW + 1000)  # results expire a set time after they finish
    assert ports.tasks.start(task.task_id, "run-c", NOW + 4, NOW + 304)[0] == ALREADY_FINISHED


def test_a_started_task_whose_lease_ran_out_can_start_again(ports: Ports) -> None:
    task = make_task()
    ports.tasks.create(task)
    ports.tasks.start(task.task_id, "dead", NOW, NOW + 10)
    outcome, again = ports.tasks.start(task.task_id, "new", NOW + 10, NOW + 20)
    assert outcome == STARTED_NOW and again is not None and again.attempts == 2
    assert not ports.tasks.finish(task.task_id, "dead", SUCCESS, NOW + 11, NOW + 1000, result=1)
    assert ports.tasks.finish(task.task_id, "new", FAILURE, NOW + 11, NOW + 1000, error="E: boom")
    final = ports.tasks.get(task.task_id)
    assert (final.task_status, final.error, final.result) == (FAILURE, "E: boom", None)


def test_creating_a_task_again_leaves_its_record_as_it_stands_and_another_task_with_its_id_is_refused(
    ports: Ports,
) -> None:
    # As botocore's retry of a PutItem whose answer was lost: the first attempt landed.
    task = make_task()
    ports.tasks.create(task)
    ports.tasks.start(task.task_id, "run-a", NOW + 1, NOW + 10, "holder-a")
    ports.tasks.create(task)
    assert ports.tasks.get(task.task_id).task_status == STARTED  # type: ignore[union-attr]
    with pytest.raises(Exception):  # noqa: B017 (each adapter raises its own)
        ports.tasks.create(replace(task, user_id="someone-else"))
    assert ports.tasks.get(task.task_id).user_id == "u1"  # type: ignore[union-attr]


def test_a_task_counts_as_running_from_its_start_until_it_finishes_or_its_run_lease_runs_out(ports: Ports) -> None:
    task = make_task()  # priority level 3
    ports.tasks.create(task)
    other = replace(make_task("21111111-1111-4111-8111-111111111111"), priority_level=0)
    ports.tasks.create(other)
    assert ports.tasks.running_holders(NOW) == {}
    ports.tasks.start(task.task_id, "run-a", NOW, NOW + 10, "holder-a")
    assert ports.tasks.running_holders(NOW + 1) == {3: ["holder-a"]}
    ports.tasks.start(other.task_id, "run-c", NOW + 1, NOW + 100, "holder-c")
    assert ports.tasks.running_holders(NOW + 2) == {0: ["holder-c"], 3: ["holder-a"]}
    assert ports.tasks.running_holders(NOW + 10) == {0: ["holder-c"]}  # its worker died: not running any more
    ports.tasks.start(task.task_id, "run-b", NOW + 10, NOW + 20, "holder-b")
    assert ports.tasks.running_holders(NOW + 11) == {0: ["holder-c"], 3: ["holder-b"]}
    ports.tasks.finish(task.task_id, "run-b", SUCCESS, NOW + 12, NOW + 1000, result=1)
    ports.tasks.finish(other.task_id, "run-c", SUCCESS, NOW + 12, NOW + 1000, result=1)
    assert ports.tasks.running_holders(NOW + 12) == {}


def test_start_of_a_missing_task(ports: Ports) -> None:
    assert ports.tasks.start("33333333-3333-4333-8333-333333333333", "r", NOW, NOW + 1) == (MISSING, None)


def test_delete_task(ports: Ports) -> None:
    task = make_task()
    ports.tasks.create(task)
    ports.tasks.delete(task.task_id)
    assert ports.tasks.get(task.task_id) is None
    assert task.task_status == PENDING


# --- queues -----------------------------------------------------------------


def test_queue_send_receive_delete(queue_ports: Ports) -> None:
    for i in range(3):
        queue_ports.queues.send(4, make_task(task_id=f"task-{i}"))
    received = []
    while len(received) < 3:  # SQS may return fewer than asked
        more = queue_ports.queues.receive(4, 10, wait_seconds=1)
        assert more, "a long poll must see the queued messages"
        received += more
    assert {m.task_id for m in received} == {"task-0", "task-1", "task-2"}
    assert {(m.user_id, m.submitted_at, m.tag) for m in received} == {("u1", NOW + 0.125, 2.5)}
    assert queue_ports.queues.receive(4, 10, wait_seconds=0) == []  # in flight: invisible
    assert queue_ports.queues.receive(3, 10, wait_seconds=0) == []  # levels are separate
    for message in received:
        queue_ports.queues.delete(4, message.receipt_handle)
    assert queue_ports.queues.receive(4, 10, wait_seconds=0) == []


# --- control ----------------------------------------------------------------


def test_slots_are_claimed_once_and_freed_by_release_or_lease_expiry(ports: Ports) -> None:
    assert ports.control.slots(2) == []
    assert ports.control.claim_slot(0, "a", NOW, NOW + 10)
    assert not ports.control.claim_slot(0, "b", NOW + 5, NOW + 15)
    assert ports.control.claim_slot(1, "b", NOW, NOW + 10)
    assert [(s.slot_id, s.holder) for s in ports.control.slots(2)] == [(0, "a"), (1, "b")]
    assert not ports.control.release_slot(0, "b")  # only the holder releases
    assert ports.control.release_slot(0, "a")
    assert ports.control.slots(2)[0].is_free(NOW)
    assert ports.control.claim_slot(1, "c", NOW + 10, NOW + 20)  # b's lease ran out
    assert not ports.control.release_slot(1, "b")
    assert ports.control.slots(2)[1].holder == "c"


def test_the_slots_and_the_backlog_come_in_one_read(ports: Ports) -> None:
    slots, state = ports.control.slots_and_backlog(3)
    assert slots == [] and state == Backlog()  # nothing written yet
    assert ports.control.claim_slot(1, "h", 100.0, 160.0)
    ports.control.enqueue(4)
    slots, state = ports.control.slots_and_backlog(3)
    assert [(slot.slot_id, slot.holder) for slot in slots] == [(1, "h")]
    assert state == ports.control.backlog() and state.counts[4] == 1
    assert ports.control.slots_and_backlog(1)[0] == []  # slots past the capacity are not read


def test_each_backlog_shard_is_a_record_of_its_own_read_with_the_slots_in_one_go(ports: Ports) -> None:
    two = ports.control.shard(2)
    assert ports.control.shard(0).backlog() == Backlog() and two.backlog() == Backlog()
    assert two.enqueue(4) == (1, 1) and two.enqueue(4) == (2, 2)
    assert ports.control.enqueue(4) == (1, 1)  # shard 0 numbers its own
    two.withdraw(4)
    two.add_backlog(1, 3, (1, 0, 0))
    assert ports.control.claim_slot(1, "h", 100.0, 160.0)
    slots, states = ports.control.slots_and_backlogs(3, 3)
    assert [(slot.slot_id, slot.holder) for slot in slots] == [(1, "h")]
    assert [s.counts for s in states] == [(0, 0, 0, 0, 1, 0), (0,) * 6, (0, 3, 0, 0, 1, 0)]
    assert (states[2].enqueued[4], states[2].withdrawn[4], states[2].tallies) == (2, 1, (1, 0, 0))
    assert ports.control.backlogs(3) == states and two.backlog() == states[2]
    # A pick on a shard moves that shard's version alone.
    taken, after = two.commit_pick(states[2], states[2], {1: 2})
    assert taken and after.counts[1] == 1 and after.version == 1
    assert ports.control.backlog().version == 0 and two.shard(0).backlog() == ports.control.backlog()


def test_only_the_holder_renews_a_slot_lease(ports: Ports) -> None:
    assert ports.control.claim_slot(0, "a", NOW, NOW + 10)
    assert not ports.control.renew_slot(0, "b", NOW + 100)
    assert ports.control.renew_slot(0, "a", NOW + 100)
    assert not ports.control.claim_slot(0, "b", NOW + 50, NOW + 60)  # renewed: still held
    assert not ports.control.renew_slot(1, "a", NOW + 100)  # never claimed


def test_a_withdrawn_enqueue_leaves_the_count_and_keeps_its_number_used(ports: Ports) -> None:
    assert ports.control.enqueue(3) == (1, 1)
    assert ports.control.enqueue(3) == (2, 2)
    ports.control.withdraw(3)
    state = ports.control.backlog()
    assert (state.counts[3], state.enqueued[3], state.withdrawn[3]) == (1, 2, 1)
    assert ports.control.enqueue(3) == (2, 3)  # numbers are never given twice


def test_an_enqueue_again_numbers_and_counts_the_task_and_leaves_the_submitted_total(ports: Ports) -> None:
    assert ports.control.enqueue(2) == (1, 1)
    ports.control.add_backlog(2, -1)  # taken
    assert ports.control.enqueue(2, again=True) == (1, 2)  # a redrive: queued again
    state = ports.control.backlog()
    assert (state.counts[2], state.enqueued[2], state.withdrawn[2]) == (1, 2, 1)
    assert policy.combined([state]).enqueued[2] - state.withdrawn[2] == 1  # one task submitted


def test_backlog_counts(ports: Ports) -> None:
    assert ports.control.backlog() == Backlog()
    ports.control.add_backlog(2, 3)
    ports.control.add_backlog(5, 1)
    ports.control.add_backlog(2, -1)
    state = ports.control.backlog()
    assert state.counts == (0, 0, 2, 0, 0, 1)
    assert state.version == 0  # only picks move the version on


def test_enqueue_counts_and_numbers_in_one_write(ports: Ports) -> None:
    assert ports.control.enqueue(2) == (1, 1)
    assert ports.control.enqueue(2) == (2, 2)
    ports.control.add_backlog(2, -1)  # a pick or a cancel takes the count, never the number
    assert ports.control.enqueue(2) == (2, 3)
    assert ports.control.enqueue(4) == (1, 1)
    state = ports.control.backlog()
    assert state.counts == (0, 0, 2, 0, 1, 0) and state.enqueued == (0, 0, 3, 0, 1, 0)


def test_a_pick_commits_only_from_the_current_state(ports: Ports) -> None:
    assert ports.control.commit_pick(Backlog(), Backlog(), {0: 1}) == (False, Backlog())  # nothing queued
    ports.control.add_backlog(3, 2)
    seen = ports.control.backlog()
    after = Backlog(seen.counts, (0.0, 0.0, 0.0, 0.25, 0.0, 0.0), 0.125, seen.version + 1)
    ports.control.add_backlog(3, 1)  # a submit to a level that had tasks: the choice stands
    taken, now = ports.control.commit_pick(seen, after, {3: 1})
    assert taken
    assert (now.counts, now.passes, now.vtime, now.version) == ((0, 0, 0, 2, 0, 0), after.passes, 0.125, 1)
    assert not ports.control.commit_pick(seen, after, {3: 1})[0]  # another pick came in between
    # A submit to an empty level lands between reading and committing: the stale
    # pick is refused, and the refusal carries the current state to choose again from.
    seen = now
    ports.control.add_backlog(0, 1)
    taken, current = ports.control.commit_pick(seen, after, {3: 1})
    assert not taken
    assert (current.counts, current.version) == ((1, 0, 0, 2, 0, 0), 1)
    taken, now = ports.control.commit_pick(current, current, {0: 1})
    assert taken and now.counts == (0, 0, 0, 2, 0, 0)
    assert not ports.control.commit_pick(now, now, {0: 1})[0]  # level 0 has none left


def test_a_pick_of_several_tasks_takes_them_from_each_level_in_one_write(ports: Ports) -> None:
    ports.control.add_backlog(2, 3)
    ports.control.add_backlog(4, 5)
    seen = ports.control.backlog()
    levels, after = policy.plan_picks(seen, 6, "fair")
    takes = {level: levels.count(level) for level in levels}
    assert levels == [2, 4, 2, 2, 4, 4] and takes == {2: 3, 4: 3}  # by the levels' shares
    taken, now = ports.control.commit_pick(seen, after, takes, (1, 0, 0))
    assert taken
    assert now.counts == (0, 0, 0, 0, 2, 0) and now.dequeued == (0, 0, 3, 0, 3, 0)
    assert (now.passes, now.vtime, now.version) == (after.passes, after.vtime, seen.version + 1)
    assert now.tallies == (1, 0, 0)
    # A level that no longer counts as many as the pick wants refuses the whole pick.
    ports.control.add_backlog(4, -1)  # a cancel: the version stays, the count drops
    levels, after = policy.plan_picks(now, 2, "fair")
    assert levels == [4, 4]
    taken, current = ports.control.commit_pick(now, after, {4: 2})
    assert not taken and current.counts == (0, 0, 0, 0, 1, 0)


def test_a_pick_keeps_the_priority_stamps_and_the_arrival_rates(ports: Ports) -> None:
    ports.control.enqueue(0)
    for _ in range(3):
        ports.control.enqueue(5)
    seen = ports.control.backlog()
    levels, after = policy.plan_picks(seen, 1, "priority")
    after = policy.with_arrival_rates(after, 1000.0)
    # One task taken (pick number 1): level 0, now empty, and the empty levels 1-4
    # are stamped 1; level 5 keeps 0. The rates start at zero from what was counted.
    assert levels == [0] and after.stamps == (1, 1, 1, 1, 1, 0)
    taken, now = ports.control.commit_pick(seen, after, {0: 1})
    assert taken
    assert (now.stamps, now.arrival_rates, now.rated_enqueued, now.rated_at) == (
        (1, 1, 1, 1, 1, 0),
        (0.0,) * 6,
        (1, 0, 0, 0, 0, 3),
        1000.0,
    )
    # A later pick writes what it changed, and the item reads back as written.
    ports.control.enqueue(2)
    seen = ports.control.backlog()
    after = replace(
        seen,
        counts=(0, 0, 1, 0, 0, 2),
        dequeued=(1, 0, 0, 0, 0, 1),
        stamps=(2, 2, 1, 2, 2, 2),
        arrival_rates=(0.125, 0.0, 0.0625, 0.0, 0.0, 0.5),
        rated_enqueued=(1, 0, 1, 0, 0, 3),
        rated_at=1015.5,
    )
    taken, now = ports.control.commit_pick(seen, after, {5: 1})
    assert taken
    read = ports.control.backlog()
    for state in (now, read):
        assert (state.stamps, state.arrival_rates, state.rated_enqueued, state.rated_at) == (
            (2, 2, 1, 2, 2, 2),
            (0.125, 0.0, 0.0625, 0.0, 0.0, 0.5),
            (1, 0, 1, 0, 0, 3),
            1015.5,
        )


def test_delete_many_deletes_in_batches_and_skips_stale_handles(queue_ports: Ports) -> None:
    for i in range(12):
        queue_ports.queues.send(1, make_task(task_id=f"task-{i}"))
    received: list[str] = []
    while len(received) < 12:
        more = queue_ports.queues.receive(1, 10, wait_seconds=1)
        assert more, "a long poll must see the queued messages"
        received += [m.receipt_handle for m in more]
    queue_ports.queues.delete_many(1, received[:11])
    queue_ports.queues.delete_many(1, [received[11], received[0]])  # received[0] is gone already
    assert [d.queued + d.in_flight for d in queue_ports.queues.depths()][1] == 0


def test_give_back_makes_a_message_visible_again(queue_ports: Ports) -> None:
    queue_ports.queues.send(2, make_task())
    (message,) = queue_ports.queues.receive(2, 10, wait_seconds=1)
    assert queue_ports.queues.receive(2, 10, wait_seconds=0) == []
    queue_ports.queues.give_back(2, [message.receipt_handle])
    (again,) = queue_ports.queues.receive(2, 10, wait_seconds=1)
    assert again.task_id == message.task_id


def test_give_back_after_a_delay_keeps_a_message_hidden_until_then(queue_ports: Ports) -> None:
    queue_ports.queues.send(2, make_task())
    (message,) = queue_ports.queues.receive(2, 10, wait_seconds=1)
    queue_ports.queues.give_back(2, [message.receipt_handle], after_seconds=2)
    assert queue_ports.queues.receive(2, 10, wait_seconds=0) == []
    time.sleep(2.2)
    (again,) = queue_ports.queues.receive(2, 10, wait_seconds=1)
    assert again.task_id == message.task_id


def test_cancel_pending_and_request_cancel(ports: Ports) -> None:
    queued, running = make_task(), make_task(task_id="44444444-4444-4444-8444-444444444444")
    ports.tasks.create(queued)
    ports.tasks.create(running)
    assert ports.tasks.start(running.task_id, "run", NOW, NOW + 900)[0] == STARTED_NOW
    assert not ports.tasks.request_cancel(queued.task_id)  # not running
    assert ports.tasks.cancel_pending(queued.task_id, NOW + 1, NOW + 100)
    assert not ports.tasks.cancel_pending(queued.task_id, NOW + 2, NOW + 100)  # once
    cancelled = ports.tasks.get(queued.task_id)
    assert (cancelled.task_status, cancelled.finished_at, cancelled.expires_at) == ("CANCELLED", NOW + 1, NOW + 100)
    assert ports.tasks.start(queued.task_id, "late", NOW + 3, NOW + 900)[0] == ALREADY_FINISHED
    assert not ports.tasks.cancel_pending(running.task_id, NOW, NOW + 100)  # running: not pending
    assert ports.tasks.request_cancel(running.task_id)
    assert ports.tasks.get(running.task_id).cancel_requested


def test_a_finish_unless_cancel_requested_yields_to_a_cancel_request(ports: Ports) -> None:
    plain, asked = make_task(), make_task(task_id="55555555-5555-4555-8555-555555555555")
    for task in (plain, asked):
        ports.tasks.create(task)
        assert ports.tasks.start(task.task_id, "run", NOW, NOW + 900)[0] == STARTED_NOW
    assert ports.tasks.request_cancel(asked.task_id)
    assert ports.tasks.finish(
        plain.task_id, "run", "SUCCESS", NOW + 1, NOW + 100, result=1, unless_cancel_requested=True
    )
    assert not ports.tasks.finish(
        asked.task_id, "run", "SUCCESS", NOW + 1, NOW + 100, result=1, unless_cancel_requested=True
    )
    assert ports.tasks.get(asked.task_id).task_status == "STARTED"
    assert ports.tasks.finish(asked.task_id, "run", "CANCELLED", NOW + 1, NOW + 100)
    assert ports.tasks.get(asked.task_id).task_status == "CANCELLED"
    assert ports.tasks.get(plain.task_id).result == 1


def test_refund_takes_back_one_live_submission(ports: Ports) -> None:
    for _ in range(2):
        ports.usage.record_submission("u1", NOW, 600, 6000)
    assert ports.usage.refund("u1", NOW, NOW + 5, 600, 6000)
    assert ports.usage.usage("u1", NOW + 5, 600, 6000) == (1, 1)
    assert ports.usage.refund("u1", NOW, NOW + 5, 600, 6000)
    assert not ports.usage.refund("u1", NOW, NOW + 5, 600, 6000)  # never below zero
    ports.usage.record_submission("u1", NOW, 600, 6000)
    assert not ports.usage.refund("u1", NOW, NOW + 7000, 600, 6000)  # out of the window already


# --- what the dashboard and the dead-letter commands read ----------------------


def test_top_users_ranks_the_noted_users_by_their_live_counts_with_weights(ports: Ports) -> None:
    for user, n in (("light", 1), ("heavy", 4), ("middle", 2), ("unnoted", 9)):
        for _ in range(n):
            ports.usage.record_submission(user, NOW, 600, 6000)
        if user != "unnoted":  # submissions note their users at milestones; this one's notes were lost
            ports.usage.note_top_user(user, 1, NOW, 6000)
    ports.usage.record_submission("gone", NOW - 20000, 600, 6000)  # expired: not listed
    ports.usage.note_top_user("gone", 1, NOW - 20000, 6000)
    ports.usage.set_weight("heavy", 3, NOW, 600, 6000)
    users = ports.usage.top_users(NOW + 1, 600, 6000, 2)
    # The counts are the counters' own, not the counts noted.
    assert [(u.user_id, u.count_in_window, u.weight) for u in users] == [("heavy", 4, 3), ("middle", 2, 1)]
    assert [u.user_id for u in ports.usage.top_users(NOW + 1, 600, 6000, 10)] == ["heavy", "middle", "light"]


def test_the_top_users_list_keeps_the_highest_noted_counts_and_tells_its_floor(ports: Ports) -> None:
    kept = top_users.KEPT
    floors = [ports.usage.note_top_user(f"user-{n:02d}", n + 1, NOW, 6000) for n in range(kept)]
    assert floors[:-1] == [0] * (kept - 1)  # room left: every milestone is noted
    assert floors[-1] == 1  # full: the lowest count kept
    assert ports.usage.note_top_user("newcomer", 50, NOW + 1, 6000) == 2  # user-00 (1) dropped
    assert ports.usage.note_top_user("user-05", 64, NOW + 2, 6000) == 2  # noted again: one entry, higher
    for n in range(kept):
        ports.usage.record_submission(f"user-{n:02d}", NOW, 600, 6000)
    ports.usage.record_submission("newcomer", NOW, 600, 6000)
    listed = {u.user_id for u in ports.usage.top_users(NOW + 3, 600, 6000, 100)}
    assert listed == {f"user-{n:02d}" for n in range(1, kept)} | {"newcomer"}
    # A window later the old notes say nothing: the list has room again.
    assert ports.usage.note_top_user("late", 1, NOW + 6001, 6000) == 0


def test_recent_lists_finished_tasks_newest_first_with_their_times(ports: Ports) -> None:
    ids = [f"{n}1111111-1111-4111-8111-111111111111" for n in range(3)]
    for n, task_id in enumerate(ids):
        ports.tasks.create(make_task(task_id))
        ports.tasks.start(task_id, f"run-{n}", NOW + 10 + n, NOW + 300)
        ports.tasks.finish(
            task_id, f"run-{n}", SUCCESS if n else FAILURE, NOW + 20 + n, NOW + 1000, error=None if n else "boom"
        )
    ports.tasks.create(make_task("91111111-1111-4111-8111-111111111111"))  # still queued: not listed
    recent = ports.tasks.recent(NOW + 30, 2)
    assert [t.task_id for t in recent] == [ids[2], ids[1]]
    assert recent[0].wait_seconds == pytest.approx(12 - 0.125)
    assert recent[0].run_seconds == pytest.approx(10)
    oldest = ports.tasks.recent(NOW + 30, 10)[-1]
    assert (oldest.task_id, oldest.task_status, oldest.error) == (ids[0], FAILURE, "boom")


def test_spread_index_keys_are_written_by_shard_and_read_back_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    aws.reset()
    with mock_aws():
        dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
        provision(PREFIX, dynamodb, sqs)
        store = DynamoTaskStore(dynamodb, f"{PREFIX}-tasks", index_shards=4)
        ids = [f"{n:08x}-1111-4111-8111-111111111111" for n in range(12)]
        for n, task_id in enumerate(ids):
            store.create(replace(make_task(task_id), submitted_at=NOW + n))
        keys = {
            item["queued_level"]["N"]
            for item in dynamodb.scan(TableName=f"{PREFIX}-tasks")["Items"]
            if "queued_level" in item
        }
        assert keys == {str(3 + 6 * policy.shard_of(task_id, 4)) for task_id in ids} and len(keys) > 1
        assert store.oldest_queued(3) == NOW  # the oldest over every key
        assert [t.task_id for t in store.queued_before(3, NOW + 5, 3)] == ids[:3]  # merged, oldest first
        for n, task_id in enumerate(ids[:6]):
            store.start(task_id, f"run-{n}", NOW + 20 + n, NOW + 300, f"holder-{n}")
        assert sorted(store.running_holders(NOW + 30)[3]) == [f"holder-{n}" for n in range(6)]
        for n, task_id in enumerate(ids[:6]):
            store.finish(task_id, f"run-{n}", SUCCESS, NOW + 40 + n, NOW + 1000)
        assert [t.task_id for t in store.recent(NOW + 50, 4)] == ids[5:1:-1]  # newest first over every key
    aws.reset()


def test_queued_count_follows_a_task_from_queued_to_started_or_cancelled(ports: Ports) -> None:
    first, second = make_task(), make_task("21111111-1111-4111-8111-111111111111")
    ports.tasks.create(first)
    ports.tasks.create(second)
    assert ports.tasks.queued_count("u1") == 2
    ports.tasks.start(first.task_id, "run", NOW, NOW + 300)
    ports.tasks.cancel_pending(second.task_id, NOW, NOW + 1000)
    assert ports.tasks.queued_count("u1") == 0
    assert ports.tasks.queued_count("nobody") == 0


def test_requeue_turns_only_a_failed_task_back_into_a_queued_one(ports: Ports) -> None:
    task = make_task()
    ports.tasks.create(task)
    assert ports.tasks.requeue(task.task_id, 7, NOW + 5000, NOW + 2) is None  # PENDING: nothing to do
    ports.tasks.start(task.task_id, "run", NOW, NOW + 300)
    ports.tasks.finish(task.task_id, "run", FAILURE, NOW + 1, NOW + 1000, error="boom")
    again = ports.tasks.requeue(task.task_id, 7, NOW + 5000, NOW + 2)
    assert again is not None
    assert (again.task_status, again.attempts, again.error, again.queue_seq, again.started_at) == (
        PENDING,
        0,
        None,
        7,
        None,
    )
    assert ports.tasks.queued_count("u1") == 1
    assert ports.tasks.start(task.task_id, "run-2", NOW + 2, NOW + 300)[0] == STARTED_NOW


def test_dead_letters_can_be_looked_at_moved_and_purged(queue_ports: Ports) -> None:
    task = make_task()
    queue_ports.queues.send(2, task)
    [message] = queue_ports.queues.receive(2, 1, 0)
    queue_ports.queues.send_dead(2, message, "RuntimeError: boom")
    queue_ports.queues.delete(2, message.receipt_handle)
    depths = queue_ports.queues.depths()
    assert [(d.level, d.queued, d.dead) for d in depths][2] == (2, 0, 1)
    # A look leaves them where they are.
    for _ in range(2):
        [seen] = queue_ports.queues.receive_dead(2, 10, hide_seconds=0)
        assert (seen.task_id, seen.user_id, seen.reason) == (task.task_id, "u1", "RuntimeError: boom")
    [taken] = queue_ports.queues.receive_dead(2, 10, hide_seconds=60)
    queue_ports.queues.delete_dead(2, taken.receipt_handle)
    assert queue_ports.queues.depths()[2].dead == 0
    queue_ports.queues.send_dead(4, message, "again")
    assert queue_ports.queues.purge_dead(4) == 1
    assert queue_ports.queues.depths()[4].dead == 0


def test_tallies_ride_on_backlog_writes_and_picks(ports: Ports) -> None:
    ports.control.add_backlog(1, 2, (1, 0, 0))
    ports.control.add_backlog(1, -1, (0, 0, 1))
    seen = ports.control.backlog()
    assert seen.tallies == (1, 0, 1)
    taken, after = ports.control.commit_pick(seen, seen, {1: 1}, (2, 1, 0))
    assert taken and after.tallies == (3, 1, 1) and after.counts[1] == 0
    ports.control.add_backlog(0, 0, (0, 1, 0))
    assert ports.control.backlog().tallies == (3, 2, 1) and ports.control.backlog().counts == (0,) * 6


def test_queued_tasks_by_age_for_the_retention_guard(ports: Ports) -> None:
    old, new = make_task(), make_task("21111111-1111-4111-8111-111111111111")
    new = Task(**{**new.__dict__, "submitted_at": NOW + 100})
    ports.tasks.create(old)
    ports.tasks.create(new)
    assert ports.tasks.oldest_queued(3) == NOW + 0.125 and ports.tasks.oldest_queued(2) is None
    stale = ports.tasks.queued_before(3, NOW + 50, 10)
    assert [(t.task_id, t.user_id, t.tag) for t in stale] == [(old.task_id, "u1", 2.5)]
    assert ports.tasks.mark_requeued(old.task_id, NOW + 200, NOW + 9000)
    assert ports.tasks.oldest_queued(3) == NOW + 100  # the requeued one counts from now on
    assert ports.tasks.queued_before(3, NOW + 50, 10) == []
    assert ports.tasks.get(old.task_id).expires_at == int(NOW + 9000)
    ports.tasks.start(new.task_id, "run", NOW + 300, NOW + 600)
    assert not ports.tasks.mark_requeued(new.task_id, NOW + 301, NOW + 9000)  # no longer queued
    assert ports.tasks.oldest_queued(3) == NOW + 200


def test_a_release_adds_the_workers_finished_tasks_to_the_slot(ports: Ports) -> None:
    assert ports.control.claim_slot(0, "a", NOW, NOW + 60)
    assert not ports.control.release_slot(0, "b", (5, 5, 5))  # not the holder: nothing counted
    assert ports.control.release_slot(0, "a", (2, 1, 0))
    assert ports.control.claim_slot(0, "c", NOW, NOW + 60)
    assert ports.control.release_slot(0, "c", (1, 0, 1))
    assert ports.control.release_slot(0, "c") is False
    [slot] = ports.control.slots(1)
    assert slot.tallies == (3, 1, 1) and slot.is_free(NOW)


def test_record_submission_stops_at_the_queued_limit_without_counting(ports: Ports) -> None:
    for _ in range(2):
        ports.usage.record_submission("u1", NOW, 600, 6000, max_queued=2)
    with pytest.raises(QueuedLimitError) as full:
        ports.usage.record_submission("u1", NOW, 600, 6000, max_queued=2)
    assert full.value.counted == 2
    assert ports.usage.usage("u1", NOW, 600, 6000) == (2, 1)  # the refused one is not counted
    # Brought down to what is really queued (say 1), the user may submit again, up to the limit.
    assert not ports.usage.set_queued("u1", seen=5, value=1)  # only from the value that was seen
    assert ports.usage.set_queued("u1", seen=2, value=1)
    assert ports.usage.record_submission("u1", NOW, 600, 6000, max_queued=2) == (2, 1)
    with pytest.raises(QueuedLimitError):
        ports.usage.record_submission("u1", NOW, 600, 6000, max_queued=2)
    assert ports.usage.record_submission("u2", NOW, 600, 6000, max_queued=2) == (0, 1)
