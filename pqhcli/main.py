"""`pqh`: the command line for pqh's HTTP API.

It talks to the API (the local runner or API Gateway), never to AWS directly, so
it works wherever the API is reachable: set PQH_URL (default http://127.0.0.1:8000).

    pqh submit user_1 '"foo"' --wait     # submit, then show position and ETA until done
    pqh result <task_id>
    pqh cancel <task_id>
    pqh stats                             # the dashboard's numbers as tables
    pqh weight user_1 6                   # needs PQH_ADMIN_TOKEN (as do the dlq and key commands)
    pqh dlq show 0 | pqh dlq redrive 0 | pqh dlq purge 0 --yes
    pqh key issue alice                   # then PQH_API_KEY=<key> for alice's commands

User commands send PQH_API_KEY (when the API uses keys); admin commands send
PQH_ADMIN_TOKEN, or PQH_API_KEY if that is an admin key.
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
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

DONE = ("SUCCESS", "FAILURE", "CANCELLED")


def segment(value: str) -> str:
    """An id as one path segment: every reserved character percent-encoded, ``/`` included.

    The API decodes a path parameter exactly once, so any id reaches the same user
    (or task, or key) as it would in a JSON body.
    """
    return quote(value, safe="")


class Api:
    """User routes send PQH_API_KEY; admin routes PQH_ADMIN_TOKEN (or PQH_API_KEY, an admin key)."""

    def __init__(self, url: str, api_key: str | None = None, admin_token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.api_key = api_key
        self.admin_token = admin_token or api_key

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        ok: tuple[int, ...] = (200, 202),
        headers: dict[str, str] | None = None,
    ) -> Any:
        token = self.admin_token if path.startswith(("/admin/", "/stats")) else self.api_key
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        try:
            response = self.http.request(method, self.url + path, json=body, timeout=30, headers=sent)
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
    ctx.obj = Api(url, os.environ.get("PQH_API_KEY"), os.environ.get("PQH_ADMIN_TOKEN"))


@cli.command()
@click.argument("user_id")
@click.argument("x", default="null")
@click.option("--wait", is_flag=True, help="follow the task until it finishes")
@click.option("--every", default=0.5, show_default=True, help="seconds between checks while waiting")
@click.option("--idempotency-key", help="retrying with the same key returns the same task instead of a new one")
@click.pass_obj
def submit(api: Api, user_id: str, x: str, wait: bool, every: float, idempotency_key: str | None) -> None:
    """Submit a task for USER_ID with input X (JSON; a bare word is taken as a string).

    With API keys (PQH_API_KEY), USER_ID must be the key's user.
    """
    try:
        value = json.loads(x)
    except ValueError:
        value = x
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    body = api.call("POST", "/task", {"x": value, "user_id": user_id}, ok=(202,), headers=headers)
    click.echo(f"task {body['task_id']} queued at level {body['priority_level']}")
    if wait:
        follow(api, body["task_id"], every)
    else:
        click.echo(body["task_id"])


def follow(api: Api, task_id: str, every: float) -> None:
    """Poll until the task finishes: a progress bar on a terminal, one line per change otherwise."""
    if sys.stdout.isatty():
        body = follow_with_bar(api, task_id, every)
    else:
        last = ""
        while True:
            body = api.call("GET", f"/result/{segment(task_id)}")
            line = describe(body)
            if line != last:
                click.echo(line)
                last = line
            if body["task_status"] in DONE:
                break
            time.sleep(every)
    click.echo(json.dumps(body["task_result"], indent=2))
    if body["task_status"] != "SUCCESS":
        sys.exit(1)


def follow_with_bar(api: Api, task_id: str, every: float) -> dict[str, Any]:
    """The bar fills as the tasks ahead of this one start; then it shows the run."""
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("submitted", total=None)
        first_position: int | None = None
        while True:
            body: dict[str, Any] = api.call("GET", f"/result/{segment(task_id)}")
            status = body["task_status"]
            if status == "PENDING" and "queue_position" in body:
                position = int(body["queue_position"])
                first_position = position if first_position is None else max(first_position, position)
                progress.update(
                    bar, description=describe(body), total=first_position + 1, completed=first_position - position
                )
            elif status == "STARTED":
                progress.update(bar, description=describe(body), total=None)
            if status in DONE:
                progress.update(bar, description=status, total=1, completed=1)
                return body
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
    click.echo(json.dumps(api.call("GET", f"/result/{segment(task_id)}"), indent=2))


@cli.command()
@click.argument("task_id")
@click.pass_obj
def cancel(api: Api, task_id: str) -> None:
    """Cancel a queued task, or ask a running one to stop."""
    body = api.call("DELETE", f"/task/{segment(task_id)}")
    click.echo(f"{task_id}: {describe(body)}")


@cli.command()
@click.argument("user_id")
@click.argument("weight", type=int)
@click.pass_obj
def weight(api: Api, user_id: str, weight: int) -> None:
    """Set a user's weight (needs PQH_ADMIN_TOKEN)."""
    body = api.call("PUT", f"/admin/users/{segment(user_id)}/weight", {"weight": weight})
    click.echo(json.dumps(body))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON of GET /stats")
@click.pass_obj
def stats(api: Api, as_json: bool) -> None:
    """Queues, capacity, totals, top users and recent tasks (GET /stats)."""
    body = api.call("GET", "/stats")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    console = Console()
    t = body["tasks"]
    waits = body["wait_seconds"]
    console.print(
        f"[bold]running {t['running']}/{body['capacity']}[/]  queued {t['queued']}  submitted {t['submitted']}  "
        f"succeeded {t['succeeded']}  failed {t['failed']}  cancelled {t['cancelled']}  "
        f"dead letters {t['dead_letters']}  wait p50 {waits['p50']}s p90 {waits['p90']}s  (policy {body['policy']})"
    )
    console.print(
        _table(
            "Queues",
            ["level", "queued", "running", "received, not deleted", "counted", "dead letters"],
            [
                # A server older than these columns has neither: "-".
                [
                    *(q["level"], q["queued"], q.get("running", "-"), q.get("received_not_deleted", "-")),
                    *(q["counted"], q["dead_letters"]),
                ]
                for q in body["queues"]
            ],
        )
    )
    console.print(
        _table(
            "Top users" + (" (first part of the usage table)" if body["users_truncated"] else ""),
            ["user", "count", "weight", "level", "queued"],
            [
                [u["user_id"], u["count_in_window"], u["weight"], u["priority_level"], u["queued"]]
                for u in body["users"]
            ],
        )
    )
    console.print(
        _table(
            "Recent tasks",
            ["task", "user", "status", "level", "wait s", "run s"],
            [
                [r["task_id"], r["user_id"], r["task_status"], r["priority_level"], r["wait_seconds"], r["run_seconds"]]
                for r in body["recent"]
            ],
        )
    )


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 or header in ("user", "status") else "right")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    return table


@cli.group()
def key() -> None:
    """API keys (needs PQH_ADMIN_TOKEN or an admin key in PQH_API_KEY)."""


@key.command("issue")
@click.argument("user_id")
@click.option("--admin", is_flag=True, help="the key may also set weights, read stats and issue keys")
@click.pass_obj
def key_issue(api: Api, user_id: str, admin: bool) -> None:
    """Issue an API key for USER_ID. It is shown once: only its hash is stored."""
    body = api.call("POST", "/admin/keys", {"user_id": user_id, "admin": admin}, ok=(201,))
    click.echo(f"key for {body['user_id']}{' (admin)' if body['admin'] else ''}; id {body['key_id']}")
    click.echo(body["api_key"])


@key.command("revoke")
@click.argument("key_id")
@click.pass_obj
def key_revoke(api: Api, key_id: str) -> None:
    """Revoke the key whose id (its SHA-256) is KEY_ID."""
    api.call("DELETE", f"/admin/keys/{segment(key_id)}")
    click.echo(f"revoked {key_id}")


@cli.group()
def dlq() -> None:
    """Dead letters: failed tasks, per priority level (needs PQH_ADMIN_TOKEN)."""


@dlq.command("show")
@click.argument("level", type=click.IntRange(0, 5))
@click.pass_obj
def dlq_show(api: Api, level: int) -> None:
    """Show up to 10 dead letters of LEVEL and why their tasks failed (they stay there)."""
    body = api.call("GET", f"/admin/dead-letters/{level}")
    click.echo(f"level {level}: about {body['dead_letters']} dead letters")
    for m in body["messages"]:
        click.echo(f"  {m['task_id']}  user={m['user_id']}  {m['task_status']}  {m['reason']}")


@dlq.command("redrive")
@click.argument("level", type=click.IntRange(0, 5))
@click.pass_obj
def dlq_redrive(api: Api, level: int) -> None:
    """Queue LEVEL's failed tasks again (up to 100 per call)."""
    body = api.call("POST", f"/admin/dead-letters/{level}/redrive")
    click.echo(f"level {level}: {body['redriven']} queued again, {body['dropped']} dropped (task gone or finished)")


@dlq.command("purge")
@click.argument("level", type=click.IntRange(0, 5))
@click.option("--yes", is_flag=True, help="do not ask")
@click.pass_obj
def dlq_purge(api: Api, level: int, yes: bool) -> None:
    """Delete LEVEL's dead letters; their tasks stay FAILURE."""
    if not yes:
        click.confirm(f"purge the dead letters of level {level}?", abort=True)
    body = api.call("DELETE", f"/admin/dead-letters/{level}")
    click.echo(f"level {level}: purged about {body['purged']} dead letters")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
