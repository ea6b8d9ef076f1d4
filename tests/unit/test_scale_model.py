"""The scale model's pieces: token bucket, latency sampler, virtual clock, item sizes, throttling."""

from __future__ import annotations

import math
import random

import pytest
from botocore.exceptions import ClientError

from bench.scale_model import (
    Aws,
    ClockExecutor,
    Latency,
    TokenBucket,
    VirtualClock,
    backlog_item_bytes,
    backoff,
    number_bytes,
)
from chalicelib.policy import Backlog


def test_a_token_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(6)] == [True] * 5 + [False]
    # 0.25 s later: 2.5 tokens back, so two takes of one, not three
    assert [bucket.take(1, 0.25) for _ in range(3)] == [True, True, False]
    # an idle second refills to the burst (5), never beyond
    assert bucket.take(5, 10.0) is True
    assert bucket.take(0.5, 10.0) is False


def test_a_write_costing_more_than_one_unit_takes_them_all_or_none() -> None:
    bucket = TokenBucket(rate=1000, burst=1000, now=0.0)
    assert bucket.take(600, 0.0) is True
    assert bucket.take(600, 0.0) is False  # 400 left: refused, nothing taken
    assert bucket.take(400, 0.0) is True


def test_the_lognormal_latency_has_its_median_and_tail_where_stated() -> None:
    latency = Latency(median=0.004, sigma=0.45)
    assert latency.quantile(0.5) == pytest.approx(0.004)
    # z(0.99) = 2.3263: 4 ms * e^(0.45 * 2.3263) = 11.4 ms
    assert latency.quantile(0.99) == pytest.approx(0.004 * math.exp(0.45 * 2.3263), rel=1e-4)
    assert latency.mean() == pytest.approx(0.004 * math.exp(0.45**2 / 2))
    rng = random.Random(7)
    samples = sorted(latency.sample(rng) for _ in range(4001))
    assert samples[2000] == pytest.approx(0.004, rel=0.05)


def test_botocore_backoff_is_at_most_one_two_four_seconds() -> None:
    rng = random.Random(3)
    for attempt, most in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 20.0)):
        assert all(0 <= backoff(attempt, rng) <= most for _ in range(200))


def test_virtual_time_jumps_to_each_wake_up_in_order() -> None:
    clock = VirtualClock(until=100.0)
    seen: list[tuple[str, float]] = []

    def sleeper(name: str, pauses: list[float]) -> None:
        for pause in pauses:
            clock.sleep(pause)
            seen.append((name, clock.now()))

    def start() -> None:
        # Spawned from a simulated thread: from the test's own thread, "a" could sleep,
        # and time move on, before "b" exists.
        clock.spawn(sleeper, "a", [1.0, 1.0, 1.0])
        clock.spawn(sleeper, "b", [2.5])

    clock.spawn(start)
    clock.run(real_timeout=10)
    assert seen == [("a", 1.0), ("a", 2.0), ("b", 2.5), ("a", 3.0)]


def test_a_virtual_timer_fires_at_its_time_unless_cancelled() -> None:
    clock = VirtualClock(until=100.0)
    fired: list[tuple[str, float]] = []

    def main() -> None:
        clock.start_timer(5.0, lambda: fired.append(("kept", clock.now())))
        cancelled = clock.start_timer(3.0, lambda: fired.append(("cancelled", clock.now())))
        clock.sleep(1.0)
        cancelled.cancel()
        cancelled.join()  # returns at once: it never started firing

    clock.spawn(main)
    clock.run(real_timeout=10)
    assert fired == [("kept", 5.0)]


def test_the_virtual_clock_stops_every_thread_at_its_end() -> None:
    clock = VirtualClock(until=10.0)
    ticks: list[float] = []

    def forever() -> None:
        while True:
            clock.sleep(4.0)
            ticks.append(clock.now())

    clock.spawn(forever)
    clock.run(real_timeout=10)
    assert ticks == [4.0, 8.0]
    assert clock.stopped


def test_dynamodb_number_sizes_are_a_byte_per_two_digits_plus_one() -> None:
    assert number_bytes(7) == 2  # one digit: 1 + 1
    assert number_bytes(12) == 2
    assert number_bytes(123) == 3
    assert number_bytes(1000) == 2  # trailing zeros are not significant
    assert number_bytes(0.5) == 2


def test_the_backlog_item_of_a_fresh_state_holds_its_key_only() -> None:
    assert backlog_item_bytes(Backlog()) == len("pk") + len("backlog")
    state = Backlog(counts=(3, 0, 0, 0, 0, 0), version=12)
    # l0 (2 + 2 bytes) and v (1 + 2 bytes) on top of the key
    assert backlog_item_bytes(state) == 9 + 4 + 3


def test_a_call_beyond_the_item_budget_is_retried_then_raises_as_dynamodb_does() -> None:
    clock = VirtualClock(until=1000.0)
    aws = Aws(clock, seed=1, wcu=2, rcu=100)
    outcomes: list[object] = []

    def writer() -> None:
        for _ in range(3):
            try:
                outcomes.append(aws.call("dynamodb", "UpdateItem", lambda: "ok", item="backlog", wcu=2))
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])

    clock.spawn(writer)
    clock.run(real_timeout=10)
    # 2 WCU/s, burst 2: the first write at once, the next after the bucket refills
    # (one second, within botocore's retries), so all three land, some after throttles.
    assert outcomes == ["ok", "ok", "ok"]
    assert aws.meter.throttles["backlog"] >= 1
    assert aws.meter.wcu["backlog"] == 6

    clock = VirtualClock(until=1000.0)
    aws = Aws(clock, seed=1, wcu=0.001, rcu=100)
    aws._bucket("w:backlog").tokens = 0
    errors: list[str] = []

    def starved() -> None:
        try:
            aws.call("dynamodb", "UpdateItem", lambda: "ok", item="backlog", wcu=1)
        except ClientError as exc:
            errors.append(exc.response["Error"]["Code"])

    clock.spawn(starved)
    clock.run(real_timeout=10)
    assert errors == ["ProvisionedThroughputExceededException"]
    assert aws.meter.throttles["backlog"] == 4  # botocore's four attempts


def test_a_side_call_overlaps_its_caller_in_virtual_time_and_its_result_waits_for_it() -> None:
    clock = VirtualClock(until=100.0)
    pool = ClockExecutor(clock, inline=lambda: False)
    seen: list[tuple[str, float]] = []

    def side() -> str:
        clock.sleep(3.0)
        return "nudged"

    def caller() -> None:
        future = pool.submit(side)
        clock.sleep(1.0)  # the caller's own call, meanwhile
        seen.append(("own call done", clock.now()))
        seen.append((future.result(), clock.now()))
        clock.sleep(1.0)
        seen.append(("after", clock.now()))

    def failing() -> None:
        raise RuntimeError("side call failed")

    def second_caller() -> None:
        with pytest.raises(RuntimeError, match="side call failed"):
            pool.submit(failing).result()
        seen.append(("error seen", clock.now()))

    def start() -> None:
        clock.spawn(caller)
        clock.spawn(second_caller)

    clock.spawn(start)
    clock.run(real_timeout=10)
    assert sorted(seen, key=lambda s: s[1]) == [
        ("error seen", 0.0),
        ("own call done", 1.0),
        ("nudged", 3.0),  # not 4.0: the two overlapped
        ("after", 4.0),
    ]
