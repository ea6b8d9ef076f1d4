"""LocalStack's runtime on loopback, without Docker: a second, independent SQS, and a deploy target.

`make localstack-venv` installs `localstack-core` (requirements-localstack.txt) into
.venv-localstack with Python 3.13; this module starts it in host mode as a child
process. Its SQS, IAM, STS, S3, Lambda's API, API Gateway, EventBridge and
CloudFormation run here. Its DynamoDB does not (it downloads Java and DynamoDB
Local on first use), and Lambda functions never run (they need Docker): a deployed
function stays in state Failed.

`python -m local.localstack [PORT]` runs it in the foreground (`make localstack`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from localstack_client import config as localstack_config  # noqa: E402
from localstack_client import session as localstack_session  # noqa: E402

from local.emulator import EmulatorError, EmulatorProcess  # noqa: E402

VENV = ROOT / ".venv-localstack"
PYTHON = VENV / "bin" / "python"
SERVICES = ("sqs", "iam", "sts", "s3", "lambda", "apigateway", "events", "cloudformation", "logs")
DEFAULT_PORT = 4566


def installed() -> bool:
    return PYTHON.exists()


class LocalStackServer(EmulatorProcess):
    """LocalStack in host mode on ``host:port``, its files and its log (localstack.log) under ``data_dir``."""

    name = "LocalStack"
    # Once its SQS has been used, its shutdown (4.14.0) never ends: it is killed after this.
    stop_seconds = 2.0

    def __init__(self, host: str, port: int, data_dir: Path, services: tuple[str, ...] = SERVICES) -> None:
        super().__init__(host, port)
        self.data_dir = data_dir
        self.services = services
        self.log_path = data_dir / "localstack.log"
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        if not installed():
            raise EmulatorError("LocalStack's runtime is not installed: run `make localstack-venv` (Python 3.13)")
        return [str(PYTHON), "-m", "localstack.runtime.main"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PQH_", "LOCALSTACK_"))}
        env.update(
            GATEWAY_LISTEN=f"{self.host}:{self.port}",
            # Twisted, the default server, binds every interface whatever GATEWAY_LISTEN says.
            GATEWAY_SERVER="hypercorn",
            # Host mode even in a container (/.dockerenv): files under FILESYSTEM_ROOT, not /var/lib/localstack.
            OVERRIDE_IN_DOCKER="0",
            FILESYSTEM_ROOT=str(self.data_dir),
            SERVICES=",".join(self.services),
            DNS_ADDRESS="0",  # no DNS server on port 53
            DISABLE_EVENTS="1",  # no usage analytics
            SKIP_SSL_CERT_DOWNLOAD="1",
            PYTHONUNBUFFERED="1",  # its "Ready." reaches the log at once
        )
        return env

    def launch(self) -> None:
        try:
            super().launch()
        except EmulatorError as exc:
            if "is taken" not in str(exc):
                raise
            raise EmulatorError(
                f"port {self.port} is taken: stop what listens there, or use another port "
                f"(`make localstack LOCALSTACK_PORT=...`, then AWS_ENDPOINT_URL_SQS=http://{self.host}:<port>)"
            ) from None

    def output(self) -> Any:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        return self._log

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def endpoint(self, service: str) -> str:
        """The endpoint of ``service`` on this LocalStack, as localstack-client maps it."""
        url = localstack_config.get_service_endpoint(service, localstack_host=self.hostport)
        if url is None:
            raise EmulatorError(f"localstack-client knows no endpoint for {service!r}")
        return str(url)

    def session(self) -> Any:
        """A localstack-client session: boto3 clients on this LocalStack, with its test credentials."""
        return localstack_session.Session(localstack_host=self.hostport)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_localstack/health", timeout=2) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def probe(self) -> None:
        """Raise OSError until LocalStack answers, every requested service is available, and it is Ready.

        Its health answers before the runtime has finished starting, and a runtime
        stopped then hangs in its shutdown (until killed); it prints "Ready." once started.
        """
        states = self.health().get("services", {})
        missing = [s for s in self.services if states.get(s) not in ("available", "running")]
        if missing:
            raise OSError(f"not yet available: {', '.join(missing)}")
        if b"\nReady." not in self.log_path.read_bytes():
            raise OSError("still starting")

    def wait_ready(self, timeout: float = 120.0) -> None:
        try:
            super().wait_ready(timeout)
        except EmulatorError as exc:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise EmulatorError(f"{exc}; its log ends:\n{tail}") from None

    def stop(self) -> None:
        super().stop()
        if self._log is not None:
            self._log.close()
            self._log = None


def main(argv: list[str]) -> int:
    port = int(argv[0]) if argv else DEFAULT_PORT
    with tempfile.TemporaryDirectory(prefix="pqh-localstack-") as data:
        server = LocalStackServer("127.0.0.1", port, Path(data))
        try:
            server.start()
        except EmulatorError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(
            f"LocalStack is up on {server.url} ({', '.join(server.services)}); log: {server.log_path}. "
            f"Ctrl-C stops it.\nSQS on it, DynamoDB embedded: AWS_ENDPOINT_URL_SQS={server.endpoint('sqs')} make run",
            flush=True,
        )
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
