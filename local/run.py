"""`make run`: the whole system on one machine, on an AWS emulator.

The same Chalice handlers and the same DynamoDB/SQS adapters that run on Lambda,
talking to an emulator over HTTP. What Lambda and EventBridge do on AWS is done
here by a second process (see local/lambdas.py): a thread pool that runs the
worker handler, and a thread that runs the dispatcher handler when it is
triggered (on submit and when a task finishes) or when the tick comes. This
process serves the API and sends it the submits' triggers.

The embedded emulator is two processes: dynalite for DynamoDB (Node.js; moto's
server with PQH_DYNAMODB_EMULATOR=moto) and moto's server for SQS; boto3 reaches
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
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL_SQS (use that
endpoint instead of starting an emulator), plus every service setting of the README.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalice.config import Config  # noqa: E402
from chalice.local import LocalDevServer, ThreadedHTTPServer  # noqa: E402

from chalicelib import aws, wiring  # noqa: E402
from chalicelib import settings as settings_mod  # noqa: E402
from infra.provision import provision, settings_env  # noqa: E402
from local import endpoints  # noqa: E402
from local.emulator import EmulatorError, EmulatorProcess, MotoServer, dynamodb_emulator  # noqa: E402
from local.gateway import GatewayHandler  # noqa: E402
from local.lambdas import RemoteLambdas  # noqa: E402

log = logging.getLogger("pqh.local")


class BacklogServer(ThreadedHTTPServer):
    """Chalice's threaded server with a listen backlog of 128, not socketserver's 5.

    With 5, eight or more clients connecting at once see SYNs dropped and
    1-second retransmit stalls.
    """

    request_queue_size = 128
    daemon_threads = True


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


def start_emulators(emulator_port: int, sqs_port: int) -> list[EmulatorProcess]:
    """Start an embedded emulator for each service the environment names no endpoint for.

    Each started one is named in AWS_ENDPOINT_URL_<SERVICE>; AWS_ENDPOINT_URL, when
    unset, points at the DynamoDB emulator, so no other call can reach AWS.
    """
    emulators: list[EmulatorProcess] = []
    dynamodb: EmulatorProcess | None = None
    if not endpoints.configured(endpoints.DYNAMODB):
        dynamodb = dynamodb_emulator("127.0.0.1", emulator_port)
        emulators.append(dynamodb)
    sqs: EmulatorProcess | None = None
    if not endpoints.configured(endpoints.SQS):
        shared = isinstance(dynamodb, MotoServer) and not sqs_port
        if shared:
            sqs = dynamodb
        else:
            sqs = MotoServer("127.0.0.1", sqs_port or emulator_port + 1)
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


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    for noisy in ("botocore", "werkzeug", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    host = os.environ.get("PQH_HOST", "127.0.0.1")
    port = _env_int("PQH_PORT", 8000)
    emulator_port = _env_int("PQH_EMULATOR_PORT", 5000)
    sqs_port = _env_int("PQH_SQS_EMULATOR_PORT", emulator_port + 1)
    prefix = os.environ.get("PQH_LOCAL_PREFIX", "pqh-local")
    tick_seconds = _env_float("PQH_TICK_SECONDS", 60.0)

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    try:
        emulators = start_emulators(emulator_port, sqs_port)
    except EmulatorError as exc:
        log.error("%s", exc)
        return 2
    stop = threading.Event()
    lambdas: RemoteLambdas | None = None
    server: LocalDevServer | None = None
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
        log.info("tables and queues ready (prefix %s)", prefix)

        import app as app_module  # after the environment is set

        for handler in app_module.app.log.handlers:  # Chalice's own handler on the "pqh" logger
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))

        # The dispatcher, the workers and the tick run in a process of their own, as
        # separate Lambda functions do on AWS; this process serves the API.
        lambdas = RemoteLambdas(capacity=settings.capacity, tick_seconds=tick_seconds)
        wiring.configure(invoker_factory=lambda _settings: lambdas)

        GatewayHandler.max_body_bytes = settings.max_body_bytes
        config = Config.create(chalice_stage="local", app_name="pqh", project_dir=str(ROOT))
        server = LocalDevServer(
            app_module.app, config, host, port, handler_cls=GatewayHandler, server_cls=BacklogServer
        )
        threading.Thread(target=server.server.serve_forever, name="http", daemon=True).start()
        log.info(
            "pqh is up: http://%s:%d (capacity %d, task %.3gs, tick %.3gs). Ctrl-C stops it.",
            host,
            port,
            settings.capacity,
            settings.task_seconds,
            tick_seconds,
        )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        stop.wait()
        log.info("stopping")
        return 0
    finally:
        if server is not None:
            server.server.shutdown()
            server.server.server_close()
        if lambdas is not None:
            lambdas.stop()
        for emulator in emulators:
            emulator.stop()
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
