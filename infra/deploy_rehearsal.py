"""`chalice deploy` against LocalStack's runtime, as a rehearsal of the first deploy of a stage.

Chalice's own deployer runs its whole plan (IAM roles and their policies, the Lambda
functions, the REST API with its authorizer, the schedule rule and its target) with
one change: after creating a function it does not wait for the function to become
Active. LocalStack without Docker cannot run Lambda functions, so every function it
creates goes to state Failed, and chalice's wait (botocore's FunctionActive waiter)
stops the deploy at the first one; CloudFormation's Lambda resource on LocalStack fails
the same way (its stack rolls back). The functions' code is never run here.

It deploys a copy of the project (chalice records what it deployed in the project's
.chalice/deployed/), to a freshly started LocalStack: run again on the same one, chalice
finds the functions there but no record of them. Refuses any endpoint that is not on
this machine: this is for LocalStack only. `make deploy-localstack` runs it:

    AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \\
      AWS_DEFAULT_REGION=us-east-1 PQH_AUTH=api_key .venv/bin/python -m infra.deploy_rehearsal --stage dev
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent

# Function name -> the state LocalStack reported when chalice would have started waiting.
SKIPPED_WAITS: dict[str, str] = {}


class RehearsalError(Exception):
    """The rehearsal cannot run as asked; the message says why."""


def _on_this_machine(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(env: dict[str, str]) -> str:
    url = env.get("AWS_ENDPOINT_URL", "").strip()
    if not url or not _on_this_machine(url):
        raise RehearsalError(
            f"AWS_ENDPOINT_URL={url!r}: the rehearsal deploys only to a LocalStack on this machine "
            "(e.g. http://127.0.0.1:4566); for AWS use `chalice deploy` itself"
        )
    others = sorted(k for k in env if k.startswith("AWS_ENDPOINT_URL_"))
    if others:
        raise RehearsalError(f"unset {', '.join(others)}: every service of the deploy must be LocalStack's")
    return url


def copy_project(dest: Path) -> Path:
    """What `chalice deploy` reads: app.py, chalicelib/, requirements.txt and .chalice/ (no deployed records)."""
    for name in ("app.py", "requirements.txt"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "chalicelib", dest / "chalicelib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / ".chalice", dest / ".chalice", ignore=shutil.ignore_patterns("deploy*"))
    return dest


def _skip_wait_for_active() -> None:
    """Replace chalice's wait for an Active function with a note of the state LocalStack reports."""
    from chalice.awsclient import TypedAWSClient

    def note_state(self: TypedAWSClient, function_name: str) -> None:
        configuration = self._client("lambda").get_function_configuration(FunctionName=function_name)
        SKIPPED_WAITS[function_name] = str(configuration.get("State", ""))
        print(f"  (not waiting for {function_name} to be Active: LocalStack reports {SKIPPED_WAITS[function_name]})")

    TypedAWSClient._wait_for_active = note_state  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--project-dir", help="deploy this copy of the project (default: a fresh one)")
    args = parser.parse_args(argv)
    try:
        check_endpoint(dict(os.environ))
    except RehearsalError as exc:
        print(exc, file=sys.stderr)
        return 2
    for name in ("AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not os.environ.get(name):
            print(f"set {name} (LocalStack takes any value, e.g. test; the region e.g. us-east-1)", file=sys.stderr)
            return 2
    _skip_wait_for_active()
    from chalice.cli import cli

    with tempfile.TemporaryDirectory(prefix="pqh-deploy-") as scratch:
        project = args.project_dir or str(copy_project(Path(scratch)))
        try:
            cli.main(
                args=["--project-dir", project, "deploy", "--stage", args.stage],
                prog_name="chalice",
                obj={},
                standalone_mode=False,
            )
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
