"""`make run`: the whole system on one machine, on an AWS emulator.

The same Chalice handlers and the same DynamoDB/SQS adapters that run on Lambda,
talking to an emulator over HTTP. What Lambda and EventBridge do on AWS is done
here by a second process (see local/lambdas.py): a thread pool that runs the
worker handler, and a thread that runs the dispatcher handler when it is
triggered (on submit and when a task finishes) or when the tick comes. This
process serves the API and sends it the submits' triggers.

The embedded emulator is two processes: dynalite for DynamoDB (Node.js; moto's
server with PQH_DYNAMODB_EMULATOR=moto, or, with a notice, on a machine without
Node.js or dynalite) and moto's server for SQS; boto3 reaches
them through AWS_ENDPOINT_URL_DYNAMODB and AWS_ENDPOINT_URL_SQS. A service whose
endpoint the environment already names (AWS_ENDPOINT_URL_<SERVICE>, else
AWS_ENDPOINT_URL) gets no embedded emulator: e.g. AWS_ENDPOINT_URL_SQS alone puts
SQS on LocalStack and keeps DynamoDB on dynalite. Before creating anything the
runner calls each service once (PQH_ENDPOINT_TIMEOUT seconds, default 5, no retry)
and stops with one line naming the service and endpoint that did not answer.

Environment (all optional): PQH_HOST, PQH_PORT, PQH_EMULATOR_PORT (DynamoDB),
PQH_SQS_EMULATOR_PORT (SQS; default PQH_EMULATOR_PORT + 1; 0 with
PQH_DYNAMODB_EMULATOR=moto: one moto server for both), PQH_DYNAMODB_EMULATOR
(dynalite or moto), PQH_LOCAL_PREFIX, PQH_TICK_SECONDS, PQH_ENDPOINT_TIMEOUT,
PQH_VISIBILITY_SECONDS (the queues' visibility timeout; the template's 960 s by
default), AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL_SQS (use
that endpoint instead of starting an emulator), plus every service setting of the
README.

With PQH_API_PROCESSES = N > 1 (two by default on two cores or more), N - 1
more processes serve the API on the same socket (local/api.py).

Supervision: the Lambda process is started again whenever it dies (see
local/lambdas.py), and so is an extra API process. dynalite keeps its tables on
disk for the run, so it is started again too. moto's server keeps its queues in memory only: if it dies, the queued
tasks' messages are gone, and the runner stops with a message instead of
accepting tasks that would never run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalice.local import LocalDevServer  # noqa: E402

from chalicelib import aws, wiring  # noqa: E402
from chalicelib import settings as settings_mod  # noqa: E402
from infra.provision import provision, settings_env  # noqa: E402
from local import endpoints  # noqa: E402
from local.api import ApiProcesses, BacklogServer, api_server  # noqa: E402
from local.emulator import (  # noqa: E402
    EmulatorError,
    EmulatorProcess,
    MotoServer,
    dynalite_missing,
    dynamodb_emulator,
    dynamodb_emulator_kind,
)
from local.lambdas import LambdaProcessError, RemoteLambdas  # noqa: E402
from local.supervision import Backoff, exit_reason, log_readably  # noqa: E402

log = logging.getLogger("pqh.local")


def api_processes_wanted() -> int:
    """PQH_API_PROCESSES: processes serving the API (1-16); by default two on a machine with two cores or more."""
    default = 2 if (os.cpu_count() or 1) >= 2 else 1
    wanted = _env_int("PQH_API_PROCESSES", default)
    if not 1 <= wanted <= 16:
        sys.exit(f"PQH_API_PROCESSES={wanted} must be between 1 and 16")
    return wanted


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        sys.exit(f"{name}={raw!r} is not an integer")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        sys.exit(f"{name}={raw!r} is not a number")


def start_emulators(emulator_port: int, sqs_port: int, data_dir: Path) -> list[EmulatorProcess]:
    """Start an embedded emulator for each service the environment names no endpoint for.

    Each started one is named in AWS_ENDPOINT_URL_<SERVICE>; AWS_ENDPOINT_URL, when
    unset, points at the DynamoDB emulator, so no other call can reach AWS. dynalite
    keeps its tables in ``data_dir`` for the run, so a dynalite that dies restarts with them.
    """
    emulators: list[EmulatorProcess] = []
    dynamodb: EmulatorProcess | None = None
    if not endpoints.configured(endpoints.DYNAMODB):
        kind, notice = dynamodb_emulator_kind(missing=dynalite_missing())
        if notice:
            log.warning("%s", notice)
        dynamodb = dynamodb_emulator("127.0.0.1", emulator_port, kind, path=data_dir / "tables")
        dynamodb.serves = "DynamoDB"
        emulators.append(dynamodb)
    sqs: EmulatorProcess | None = None
    if not endpoints.configured(endpoints.SQS):
        shared = isinstance(dynamodb, MotoServer) and not sqs_port
        if shared and dynamodb is not None:
            dynamodb.serves = "DynamoDB and SQS"
            sqs = dynamodb
        else:
            sqs = MotoServer("127.0.0.1", sqs_port or emulator_port + 1)
            sqs.serves = "SQS"
            emulators.append(sqs)
    try:
        for emulator in emulators:
            emulator.launch()
        for emulator in emulators:
            emulator.wait_ready()
    except BaseException:
        for emulator in emulators:
            emulator.stop()
        raise
    if dynamodb is not None:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = dynamodb.url
        os.environ.setdefault("AWS_ENDPOINT_URL", dynamodb.url)
    if sqs is not None:
        os.environ["AWS_ENDPOINT_URL_SQS"] = sqs.url
    return emulators


def _level_queue_urls(sqs: Any, prefix: str) -> list[str]:
    return [sqs.get_queue_url(QueueName=f"{prefix}-level-{level}")["QueueUrl"] for level in range(6)]


def _set_visibility(sqs: Any, prefix: str, seconds: int) -> None:
    """PQH_VISIBILITY_SECONDS: a received message comes back this much sooner or later than on AWS."""
    for url in _level_queue_urls(sqs, prefix):
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(seconds)})


def _visibility(sqs: Any, prefix: str) -> int:
    url = _level_queue_urls(sqs, prefix)[0]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
    return int(attributes["Attributes"]["VisibilityTimeout"])


class EmulatorWatch:
    """Restarts an emulator that died if it keeps its state; otherwise says why the runner must stop."""

    def __init__(self, emulators: list[EmulatorProcess]) -> None:
        self._emulators = emulators
        self._backoff = {id(emulator): Backoff() for emulator in emulators}
        self._started = {id(emulator): time.monotonic() for emulator in emulators}

    def check(self) -> str | None:
        """None while every emulator runs (after restarting those that can be); else why to stop."""
        for emulator in self._emulators:
            code = emulator.exit_code()
            if code is None:
                continue
            if not emulator.keeps_state:
                held = {"SQS": "queues", "DynamoDB": "tables"}.get(emulator.serves, "tables and queues")
                return (
                    f"{emulator.name} ({emulator.serves}) {exit_reason(code)}. It kept its {held} in memory only: "
                    "they are gone, and with them what the queued tasks need to run. Stopping rather than accepting "
                    "tasks that would never run. Start `make run` again (it starts empty)."
                )
            pause = self._backoff[id(emulator)].pause(time.monotonic() - self._started[id(emulator)])
            log.error(
                "%s (%s) %s; starting it again%s with its tables (on disk for this run)",
                emulator.name,
                emulator.serves,
                exit_reason(code),
                f" in {pause:.0f}s (it keeps dying)" if pause else "",
            )
            time.sleep(pause)
            try:
                emulator.start()
            except EmulatorError as exc:
                return f"{emulator.name} ({emulator.serves}) could not be started again: {exc}; stopping."
            self._started[id(emulator)] = time.monotonic()
            log.info("%s (%s) is running again on %s", emulator.name, emulator.serves, emulator.url)
        return None


def main() -> int:
    # The "pqh" loggers print one readable line per event here, JSON on Lambda. Metrics
    # (EMF blobs, for CloudWatch) stay off: /stats and the dashboard show the same
    # numbers locally. POWERTOOLS_METRICS_DISABLED=false prints them (the Lambda process inherits it).
    log_readably()
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    host = os.environ.get("PQH_HOST", "127.0.0.1")
    port = _env_int("PQH_PORT", 8000)
    emulator_port = _env_int("PQH_EMULATOR_PORT", 5000)
    sqs_port = _env_int("PQH_SQS_EMULATOR_PORT", emulator_port + 1)
    prefix = os.environ.get("PQH_LOCAL_PREFIX", "pqh-local")
    tick_seconds = _env_float("PQH_TICK_SECONDS", 60.0)
    api_processes = api_processes_wanted()

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    # dynalite's tables live on disk for this run, so a dynalite that dies restarts with them.
    data_dir = Path(tempfile.mkdtemp(prefix="pqh-dynalite-"))
    try:
        emulators = start_emulators(emulator_port, sqs_port, data_dir)
    except EmulatorError as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        log.error("%s", exc)
        return 2
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    stop = threading.Event()
    lambdas: RemoteLambdas | None = None
    server: LocalDevServer | None = None
    extra_api: ApiProcesses | None = None
    try:
        timeout = _env_float("PQH_ENDPOINT_TIMEOUT", endpoints.DEFAULT_TIMEOUT)
        try:
            urls = [endpoints.check(service, timeout) for service in endpoints.SERVICES]
        except endpoints.EndpointError as exc:
            log.error("%s", exc)
            return 2
        started = {emulator.url: emulator.name for emulator in emulators}
        log.info(
            "AWS endpoints: %s",
            ", ".join(
                f"{service.name} {url}" + (f" (embedded {started[url]})" if url in started else "")
                for service, url in zip(endpoints.SERVICES, urls, strict=True)
            ),
        )
        os.environ.update(settings_env(prefix))
        os.environ["PQH_HANDOFF"] = "local"
        try:
            settings = settings_mod.load()
        except settings_mod.ConfigError as exc:
            log.error("configuration error: %s", exc)
            return 2
        provision(prefix, aws.client("dynamodb"), aws.client("sqs"))
        visibility = _env_int("PQH_VISIBILITY_SECONDS", 0)
        if visibility:
            _set_visibility(aws.client("sqs"), prefix, visibility)
        visibility = visibility or _visibility(aws.client("sqs"), prefix)
        if settings.run_lease_seconds >= visibility:
            log.error(
                "PQH_RUN_LEASE_SECONDS=%d must be below the queues' visibility timeout (%d s, PQH_VISIBILITY_SECONDS): "
                "a message would come back while its task still runs",
                settings.run_lease_seconds,
                visibility,
            )
            return 2
        log.info("tables and queues ready (prefix %s)", prefix)

        import app as app_module  # after the environment is set

        # The dispatcher, the workers and the tick run in a process of their own, as
        # separate Lambda functions do on AWS; this process serves the API.
        try:
            lambdas = RemoteLambdas(capacity=settings.capacity, tick_seconds=tick_seconds)
        except LambdaProcessError as exc:
            log.error("%s", exc)
            return 2
        wiring.configure(invoker_factory=lambda _settings: lambdas)

        server = api_server(app_module, settings.max_body_bytes, host, port, BacklogServer)
        threading.Thread(target=server.server.serve_forever, name="http", daemon=True).start()
        if api_processes > 1:
            # As Lambda runs more API instances under load: the others accept on this socket.
            extra_api = ApiProcesses(api_processes - 1, server.server.socket.fileno(), lambdas.trigger_dispatch)
        log.info(
            "pqh is up: http://%s:%d (capacity %d, task %.3gs, tick %.3gs, %d API process%s). Ctrl-C stops it.",
            host,
            port,
            settings.capacity,
            settings.task_seconds,
            tick_seconds,
            api_processes,
            "es" if api_processes > 1 else "",
        )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        watch = EmulatorWatch(emulators)
        while not stop.wait(0.5):
            lost = watch.check()
            if lost:
                log.error("%s", lost)
                log.info("stopping")
                return 1
        log.info("stopping")
        return 0
    finally:
        if extra_api is not None:
            extra_api.stop()
        if server is not None:
            server.server.shutdown()
            server.server.server_close()
        if lambdas is not None:
            lambdas.stop()
        for emulator in emulators:
            emulator.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
