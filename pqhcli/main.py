"""`pqh`: the command line for pqh's HTTP API.

It talks to the API (the local runner or API Gateway), never to AWS directly, so
it works wherever the API is reachable: set PQH_URL (default http://127.0.0.1:8000).

    pqh submit user_1 '"foo"' --wait     # submit, then show position and ETA until done
    pqh result <task_id>
    pqh cancel <task_id>
    pqh weight user_1 6                   # needs PQH_ADMIN_TOKEN
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote

import click
import requests

DONE = ("SUCCESS", "FAILURE", "CANCELLED")


class Api:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 202)) -> Any:
        try:
            response = self.http.request(method, self.url + path, json=body, timeout=30)
        except requests.RequestException as exc:
            raise click.ClickException(
                f"cannot reach {self.url} ({exc.__class__.__name__}); is `make run` going?"
            ) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": "bad_response", "message": response.text[:200]}
        if response.status_code not in ok:
            message = payload.get("message") or payload.get("Message") or response.text[:200]
            raise click.ClickException(f"{response.status_code} {payload.get('error', '')}: {message}")
        return payload


def describe(body: dict[str, Any]) -> str:
    status = str(body["task_status"])
    if status == "PENDING" and "queue_position" in body:
        return f"PENDING  position {body['queue_position']} (approx.), starts in ~{body['eta_seconds']:.1f}s"
    if status == "STARTED":
        return "STARTED  running" + (" (cancel requested)" if body.get("cancel_requested") else "")
    return status


@click.group()
@click.option("--url", envvar="PQH_URL", default="http://127.0.0.1:8000", show_default=True, help="the pqh API")
@click.pass_context
def cli(ctx: click.Context, url: str) -> None:
    """pqh: submit tasks, follow them, cancel them, set weights."""
    ctx.obj = Api(url, os.environ.get("PQH_ADMIN_TOKEN"))


@cli.command()
@click.argument("user_id")
@click.argument("x", default="null")
@click.option("--wait", is_flag=True, help="follow the task until it finishes")
@click.option("--every", default=0.5, show_default=True, help="seconds between checks while waiting")
@click.pass_obj
def submit(api: Api, user_id: str, x: str, wait: bool, every: float) -> None:
    """Submit a task for USER_ID with input X (JSON; a bare word is taken as a string)."""
    try:
        value = json.loads(x)
    except ValueError:
        value = x
    body = api.call("POST", "/task", {"x": value, "user_id": user_id}, ok=(202,))
    click.echo(f"task {body['task_id']} queued at level {body['priority_level']}")
    if wait:
        follow(api, body["task_id"], every)
    else:
        click.echo(body["task_id"])


def follow(api: Api, task_id: str, every: float) -> None:
    last = ""
    while True:
        body = api.call("GET", f"/result/{task_id}")
        line = describe(body)
        if line != last:
            click.echo(line)
            last = line
        if body["task_status"] in DONE:
            click.echo(json.dumps(body["task_result"], indent=2))
            if body["task_status"] != "SUCCESS":
                sys.exit(1)
            return
        time.sleep(every)


@cli.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="follow the task until it finishes")
@click.pass_obj
def result(api: Api, task_id: str, wait: bool) -> None:
    """Show a task's status, position and ETA, or its result."""
    if wait:
        follow(api, task_id, 0.5)
        return
    click.echo(json.dumps(api.call("GET", f"/result/{task_id}"), indent=2))


@cli.command()
@click.argument("task_id")
@click.pass_obj
def cancel(api: Api, task_id: str) -> None:
    """Cancel a queued task, or ask a running one to stop."""
    body = api.call("DELETE", f"/task/{task_id}")
    click.echo(f"{task_id}: {describe(body)}")


@cli.command()
@click.argument("user_id")
@click.argument("weight", type=int)
@click.pass_obj
def weight(api: Api, user_id: str, weight: int) -> None:
    """Set a user's weight (needs PQH_ADMIN_TOKEN)."""
    body = api.call("PUT", f"/admin/users/{quote(user_id, safe='')}/weight", {"weight": weight})
    click.echo(json.dumps(body))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
