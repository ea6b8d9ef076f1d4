"""End to end: `python -m local.run` as a user runs it, driven over HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
import requests

from local.emulator import MotoServer
from local.process import ROOT, LocalSystem, free_port, port_open

pytestmark = pytest.mark.e2e


def test_an_idle_system_starts_a_task_at_once_and_light_users_overtake_a_burst(
    local_system: Callable[..., LocalSystem], tmp_path: Path
) -> None:
    # Strict priority: the old scheme, whose promise this checks. (The priority
    # default lets a waiting lower level through once per PQH_FLOOR_PICKS picks;
    # bench/fairness.py measures it.) No
    # prefetch: with it, the tasks picked ahead while another runs (a batch of up to
    # PQH_PREFETCH_SECONDS of work) may be ones a light user's later task would have
    # overtaken (tests/unit/test_services.py checks the batches).
    system = local_system(
        PQH_CAPACITY="1",
        PQH_TASK_SECONDS="0.1",
        PQH_TICK_SECONDS="60",
        PQH_POLICY="strict",
        PQH_PREFETCH_SECONDS="0",
        PQH_TASK_FUNCTION="tests.e2e.gate.gated",
    )

    # Idle: the task starts on the submit's own trigger, not on the minute tick.
    first = system.submit("early_bird", "x0")
    (done,) = system.wait_all([first["task_id"]], timeout=30)
    assert done["task_status"] == "SUCCESS"
    assert done["started_at"] - done["submitted_at"] < 30  # the tick is 60 s away
    assert done["task_result"]["input_x"] == "x0"

    # The one slot is held by a task that waits for a file: everything below is queued
    # before anything else starts, however slow the submits are on a busy machine.
    gate = tmp_path / "gate"
    holder = system.submit("gatekeeper", {"gate": str(gate)})
    deadline = time.monotonic() + 60
    while system.result(holder["task_id"])["task_status"] != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert system.result(holder["task_id"])["task_status"] == "STARTED"

    # A heavy user's burst of 30, then five light users right after.
    heavy = [system.submit("heavy", i) for i in range(30)]
    light = [system.submit(f"light_{i}", i) for i in range(5)]
    assert [t["priority_level"] for t in heavy[:7]] == [0, 1, 1, 1, 1, 1, 2]
    assert {t["priority_level"] for t in light} == {0}
    gate.touch()

    heavy_done = system.wait_all([t["task_id"] for t in heavy])
    light_done = system.wait_all([t["task_id"] for t in light])
    # Strict priority: the light users' level-0 tasks all start before any of the
    # burst's level-1 and lower tasks (29 of its 30), although submitted after them.
    below = [t for t, submitted in zip(heavy_done, heavy, strict=True) if submitted["priority_level"] > 0]
    assert len(below) == 29
    assert max(t["started_at"] for t in light_done) < min(t["started_at"] for t in below)

    # Nothing is left PENDING or STARTED.
    everything = [first["task_id"], holder["task_id"]] + [t["task_id"] for t in heavy + light]
    assert {system.result(t)["task_status"] for t in everything} == {"SUCCESS"}

    # Ctrl-C stops everything cleanly: the emulators and the Lambda stand-ins' process.
    children = system.children()
    assert any("local.lambdas" in command for command in children.values()), children
    assert system.stop() == 0
    assert not port_open(system.emulator_port) and not port_open(system.sqs_emulator_port)
    time.sleep(0.5)
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
    log = system.log_path.read_text()
    assert "Traceback" not in log
    for event in ("submitted task=", "dispatched task=", "started task=", "succeeded task="):
        assert event in log


def _readme_curl_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    return [block.strip() for block in blocks if block.lstrip().startswith("curl --location")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")
def test_the_readme_curl_examples_work(local_system: Callable[..., LocalSystem]) -> None:
    system = local_system(PQH_TASK_SECONDS="0.05")
    post, get = _readme_curl_commands()
    address = system.base_url.removeprefix("http://")
    submitted = subprocess.run(
        ["bash", "-c", post.replace("localhost:8000", address)], capture_output=True, text=True, check=True
    )
    body = json.loads(submitted.stdout)
    assert body["task_status"] == "PENDING" and body["user_id"] == "user_1"
    system.wait_all([body["task_id"]], timeout=30)
    example_id = re.search(r"/result/([0-9a-f-]{36})", get).group(1)  # type: ignore[union-attr]
    command = get.replace("localhost:8000", address).replace(example_id, body["task_id"])
    result = json.loads(subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout)
    assert result["task_status"] == "SUCCESS"
    assert result["task_result"]["input_x"] == "foo"


def test_concurrent_clients_get_exact_levels_and_lose_nothing(local_system: Callable[..., LocalSystem]) -> None:
    # One user's 100 submits: the per-user limit on queued tasks is not what this checks.
    system = local_system(PQH_CAPACITY="2", PQH_TASK_SECONDS="0.01", PQH_MAX_QUEUED_PER_USER="1000")
    with ThreadPoolExecutor(max_workers=8) as pool:
        submitted = list(pool.map(lambda i: system.submit("burst", i), range(100)))
    counts = Counter(t["priority_level"] for t in submitted)
    assert [counts[level] for level in range(6)] == [1, 5, 10, 10, 10, 64]
    done = system.wait_all([t["task_id"] for t in submitted], timeout=120)
    assert {t["task_status"] for t in done} == {"SUCCESS"}
    assert sorted(t["task_result"]["input_x"] for t in done) == list(range(100))


def test_the_runner_uses_an_existing_emulator_when_aws_endpoint_url_is_set(
    local_system: Callable[..., LocalSystem],
) -> None:
    emulator = MotoServer("127.0.0.1", free_port())
    emulator.start()
    try:
        system = local_system(AWS_ENDPOINT_URL=emulator.url, PQH_TASK_SECONDS="0.01")
        task = system.submit("user_1", "foo")
        (done,) = system.wait_all([task["task_id"]], timeout=30)
        assert done["task_status"] == "SUCCESS"
        log = system.log_path.read_text()
        assert f"AWS endpoints: DynamoDB {emulator.url}, SQS {emulator.url}\n" in log  # no embedded one started
        assert system.stop() == 0
        # The resources live in that emulator, and outlive the runner.
        sqs = boto3.client(
            "sqs", endpoint_url=emulator.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        names = [url.rsplit("/", 1)[1] for url in sqs.list_queues().get("QueueUrls", [])]
        assert sum(1 for name in names if name.endswith(("-level-0", "-level-5-dlq"))) == 2
    finally:
        emulator.stop()


def test_sqs_alone_on_another_endpoint_keeps_dynamodb_on_the_embedded_emulator(
    local_system: Callable[..., LocalSystem],
) -> None:
    """The per-service setup (SQS on LocalStack, DynamoDB embedded) rests on AWS_ENDPOINT_URL_SQS being honoured."""
    sqs_server = MotoServer("127.0.0.1", free_port())
    sqs_server.start()
    try:
        system = local_system(AWS_ENDPOINT_URL_SQS=sqs_server.url, PQH_TASK_SECONDS="0.01")
        task = system.submit("user_1", "foo")
        (done,) = system.wait_all([task["task_id"]], timeout=30)
        assert done["task_status"] == "SUCCESS"
        dynalite = f"http://127.0.0.1:{system.emulator_port}"
        assert f"AWS endpoints: DynamoDB {dynalite} (embedded dynalite), SQS {sqs_server.url}\n" in (
            system.log_path.read_text()
        )
        assert system.stop() == 0
        sqs = boto3.client(
            "sqs",
            endpoint_url=sqs_server.url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="y",
        )
        names = [url.rsplit("/", 1)[1] for url in sqs.list_queues().get("QueueUrls", [])]
        assert sum(1 for name in names if name.endswith(("-level-0", "-level-5-dlq"))) == 2
        assert not port_open(system.sqs_emulator_port)  # no embedded SQS was started
    finally:
        sqs_server.stop()


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"])
def test_a_dynamodb_endpoint_that_never_answers_stops_the_runner_with_one_line_naming_it(
    tmp_path: Path, variable: str
) -> None:
    """The README's old LocalStack recipe hung for minutes on LocalStack's DynamoDB and ended in a traceback."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the connections; nothing ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "PQH_"))}
        env.update(
            {variable: url},
            PQH_PORT=str(free_port()),
            PQH_EMULATOR_PORT=str(free_port()),
            PQH_SQS_EMULATOR_PORT=str(free_port()),
            PQH_ENDPOINT_TIMEOUT="1",
        )
        run = subprocess.run(
            [sys.executable, "-m", "local.run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
        )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    (line,) = [line for line in output.splitlines() if f"DynamoDB at {url}" in line]
    assert "did not answer ListTables within 1s (ReadTimeout" in line
    assert "AWS_ENDPOINT_URL_SQS" in line  # what to do instead
    assert "Traceback" not in output
    assert "tables and queues ready" not in output


def test_the_cli_follows_position_and_eta_and_cancels(local_system: Callable[..., LocalSystem]) -> None:
    # One slot, 1-s tasks: the heavy user's fourth task waits behind its first three
    # (at least 2 s after the first starts), long enough for a `pqh` process to start
    # and cancel it on a loaded machine; a light user's task would go next instead.
    system = local_system(PQH_CAPACITY="1", PQH_TASK_SECONDS="1.0", PQH_POLICY="strict")
    env = {**os.environ, "PQH_URL": system.base_url}
    pqh = [sys.executable, "-m", "pqhcli.main"]
    blockers = [system.submit("busy", i)["task_id"] for i in range(3)]
    queued = system.submit("busy", "to cancel")["task_id"]
    cancelled = subprocess.run([*pqh, "cancel", queued], env=env, capture_output=True, text=True, cwd=ROOT)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "CANCELLED" in cancelled.stdout
    waited = subprocess.run(
        [*pqh, "submit", "cli_user", '{"n": 1}', "--wait", "--every", "0.1"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert waited.returncode == 0, waited.stderr
    # Progress on stderr; the result alone on stdout.
    assert "PENDING  position" in waited.stderr and "starts in ~" in waited.stderr and "SUCCESS" in waited.stderr
    assert json.loads(waited.stdout)["input_x"] == {"n": 1}
    again = subprocess.run([*pqh, "cancel", queued], env=env, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 1 and "409" in again.stderr  # already cancelled: a clear error
    system.wait_all(blockers)


def test_the_cli_shows_stats_and_looks_at_redrives_and_purges_dead_letters(
    local_system: Callable[..., LocalSystem],
) -> None:
    system = local_system(
        PQH_CAPACITY="2",
        PQH_TASK_SECONDS="0.1",
        PQH_TASK_FUNCTION="chalicelib.tasks.fails_on_poison",
        PQH_ADMIN_TOKEN="op-secret",
    )
    env = {**os.environ, "PQH_URL": system.base_url, "PQH_ADMIN_TOKEN": "op-secret", "COLUMNS": "200"}

    def pqh(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "pqhcli.main", *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    good = system.submit("alice", "fine")["task_id"]
    bad = system.submit("mallory", "poison")["task_id"]
    results = system.wait_all([good, bad])
    assert [r["task_status"] for r in results] == ["SUCCESS", "FAILURE"]

    shown = pqh("stats")
    assert "succeeded 1" in shown and "failed 1" in shown and "dead letters 1" in shown
    assert "alice" in shown and "mallory" in shown
    assert json.loads(pqh("stats", "--json"))["tasks"]["dead_letters"] == 1

    level = results[1]["priority_level"]
    looked = pqh("dlq", "show", str(level))
    assert bad in looked and "poison" in looked
    assert "1 queued again" in pqh("dlq", "redrive", str(level))
    # Redriven, it runs again and, still poison, fails again: back among the dead letters.
    assert system.result(bad)["task_status"] in ("PENDING", "STARTED", "FAILURE")
    deadline = time.monotonic() + 30
    while json.loads(pqh("stats", "--json"))["queues"][level]["dead_letters"] != 1:
        assert time.monotonic() < deadline, "the redriven task did not fail again"
        time.sleep(0.2)
    assert json.loads(pqh("stats", "--json"))["tasks"]["failed"] == 2
    assert "purged about 1" in pqh("dlq", "purge", str(level), "--yes")
    assert system.result(bad)["task_status"] == "FAILURE"


def test_api_key_mode_on_the_local_runner(local_system: Callable[..., LocalSystem]) -> None:
    """Keys issued with the CLI; each user sees only their own tasks; no key, no service."""
    system = local_system(PQH_AUTH="api_key", PQH_ADMIN_TOKEN="boot", PQH_TASK_SECONDS="0")

    def pqh(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pqhcli.main", *args],
            env={**os.environ, "PQH_URL": system.base_url, **env},
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    alice_key = pqh("key", "issue", "alice", PQH_ADMIN_TOKEN="boot").stdout.strip().splitlines()[-1]
    bob_key = pqh("key", "issue", "bob", PQH_ADMIN_TOKEN="boot").stdout.strip().splitlines()[-1]
    assert alice_key.startswith("pqh_") and bob_key.startswith("pqh_")

    done = pqh("submit", "alice", '"hello"', "--wait", "--every", "0.1", PQH_API_KEY=alice_key)
    assert done.returncode == 0, done.stderr
    task_id = re.search(r"task ([0-9a-f-]{36})", done.stderr).group(1)  # type: ignore[union-attr]
    assert '"input_x": "hello"' in done.stdout
    assert pqh("result", task_id, PQH_API_KEY=alice_key).returncode == 0
    as_bob = pqh("result", task_id, PQH_API_KEY=bob_key)
    assert as_bob.returncode == 5 and "404" in as_bob.stderr  # not found
    as_nobody = system.http.get(f"{system.base_url}/result/{task_id}", timeout=10)
    assert as_nobody.status_code == 401
    keyless = pqh("result", task_id)
    assert keyless.returncode == 3 and "401" in keyless.stderr and "PQH_API_KEY" in keyless.stderr
    posing = pqh("submit", "alice", "1", PQH_API_KEY=bob_key)
    assert posing.returncode == 4 and "403" in posing.stderr  # not allowed


def test_load_of_eight_clients_gives_no_errors_and_loses_no_task(local_system: Callable[..., LocalSystem]) -> None:
    """8 clients, 600 submits and a result read after each: every answer 2xx, every task run exactly once."""
    system = local_system(PQH_CAPACITY="4", PQH_TASK_SECONDS="0")
    per_client = 75

    def client(number: int) -> tuple[list[str], list[int]]:
        session = requests.Session()
        ids, bad = [], []
        for i in range(per_client):
            body = {"x": [number, i], "user_id": f"load-{(number * per_client + i) % 20}"}
            posted = session.post(f"{system.base_url}/task", json=body, timeout=30)
            if posted.status_code != 202:
                bad.append(posted.status_code)
                continue
            ids.append(posted.json()["task_id"])
            read = session.get(f"{system.base_url}/result/{ids[-1]}", timeout=30)
            if read.status_code != 200:
                bad.append(read.status_code)
        return ids, bad

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(client, range(8)))
    task_ids = [task_id for ids, _ in outcomes for task_id in ids]
    assert [code for _, bad in outcomes for code in bad] == []
    assert len(task_ids) == len(set(task_ids)) == 8 * per_client
    done = system.wait_all(task_ids, timeout=300)
    assert {t["task_status"] for t in done} == {"SUCCESS"}
    inputs = sorted(tuple(t["task_result"]["input_x"]) for t in done)
    assert inputs == sorted((n, i) for n in range(8) for i in range(per_client))  # each exactly once
