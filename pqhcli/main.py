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

Data goes to stdout and messages to stderr; `--json` (on any command) prints the
API's JSON. Exit codes (also in `pqh --help`): 0 done, 1 refused (400, 409, 413,
429), 2 usage, 3 not authenticated (401), 4 not allowed (403), 5 not found (404),
6 server error or unreachable, 7 a waited-for task did not succeed.

User commands send PQH_API_KEY (when the API uses keys); admin commands send
PQH_ADMIN_TOKEN, or PQH_API_KEY if that is an admin key.
"""

from __future__ import annotations

import email.utils
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from typing import Any, NoReturn
from urllib.parse import quote

import click
import requests
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pqhcli import __version__

DONE = ("SUCCESS", "FAILURE", "CANCELLED")

# Exit codes: one per kind of failure a script may want to tell apart.
EXIT_REFUSED = 1  # the API refused the request: invalid input (400), conflict (409), too large (413), 429
EXIT_USAGE = 2  # click's own code for bad arguments and options
EXIT_UNAUTHENTICATED = 3  # 401
EXIT_FORBIDDEN = 4  # 403
EXIT_NOT_FOUND = 5  # 404
EXIT_SERVER = 6  # 5xx, an answer that is not JSON, or no answer at all
EXIT_TASK_DID_NOT_SUCCEED = 7  # --wait: the task finished FAILURE or CANCELLED

# Retries of a 429 or 503: at most this many, each waiting what Retry-After says
# (or 1, 2, 4 s without it), and never when it asks for more than MAX_RETRY_AFTER.
RETRIES = 3
MAX_RETRY_AFTER = 30.0
RETRIED_STATUSES = (429, 503)

HELP_EPILOG = """\b
Environment:
  PQH_URL          the API (default http://127.0.0.1:8000; --url overrides it)
  PQH_API_KEY      your API key, sent on user commands when the API uses keys
  PQH_ADMIN_TOKEN  the admin token (or an admin key), sent on admin commands

\b
Output: data on stdout, messages on stderr; --json (before or after the
command) prints the API's JSON on stdout and errors as JSON on stderr.

\b
Exit codes:
  0  done
  1  refused by the API: invalid input, conflict, too many queued (400, 409, 413, 429)
  2  usage error: bad arguments or options
  3  not authenticated (401): no key or token, or an unknown one
  4  not allowed (403): this key or token may not do that
  5  not found (404)
  6  server error (5xx) or the API is unreachable
  7  --wait: the task finished but did not succeed (FAILURE or CANCELLED)

A 429 or 503 is retried up to 3 times, waiting what its Retry-After asks (at most 30 s).
"""


def segment(value: str) -> str:
    """An id as one path segment: every reserved character percent-encoded, ``/`` included.

    The API decodes a path parameter exactly once, so any id reaches the same user
    (or task, or key) as it would in a JSON body.
    """
    return quote(value, safe="")


def exit_code_for(status: int) -> int:
    """The exit code for an HTTP status the API answered with (not a success)."""
    if status == 401:
        return EXIT_UNAUTHENTICATED
    if status == 403:
        return EXIT_FORBIDDEN
    if status == 404:
        return EXIT_NOT_FOUND
    if status >= 500:
        return EXIT_SERVER
    return EXIT_REFUSED


class ApiError(click.ClickException):
    """A failed request: its exit code says which kind; shown on stderr (as JSON with --json)."""

    def __init__(
        self, message: str, exit_code: int, status: int | None, error: str, detail: str, as_json: bool = False
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class
        self.status = status
        self.error = error
        self.detail = detail  # the API's own message
        self.as_json = as_json

    def show(self, file: Any = None) -> None:
        if self.as_json:
            body = {"error": self.error, "message": self.detail, "status": self.status, "exit_code": self.exit_code}
            click.echo(json.dumps(body), err=True)
        else:
            click.echo(f"pqh: {self.message}", err=True)


def retry_delay(header: str | None, attempt: int, now: float) -> float:
    """Seconds a 429/503 asks us to wait: Retry-After (seconds or an HTTP date), else 1, 2, 4."""
    if header:
        header = header.strip()
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - now)
        except (TypeError, ValueError):
            pass
    return float(2**attempt)


class Api:
    """User routes send PQH_API_KEY; admin routes PQH_ADMIN_TOKEN (or PQH_API_KEY, an admin key)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        admin_token: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.api_key = api_key
        self.admin_token = admin_token or api_key
        self.sleep = sleep
        self.clock = clock
        self.as_json = False  # set by --json: errors are shown as JSON too

    def fail(self, message: str, exit_code: int, status: int | None, error: str, detail: str = "") -> NoReturn:
        raise ApiError(message, exit_code, status, error, detail or message, self.as_json)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        ok: tuple[int, ...] = (200, 202),
        headers: dict[str, str] | None = None,
    ) -> Any:
        admin = path.startswith(("/admin/", "/stats"))
        token = self.admin_token if admin else self.api_key
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        attempt = 0
        while True:
            try:
                response = self.http.request(method, self.url + path, json=body, timeout=30, headers=sent)
            except requests.RequestException as exc:
                self.fail(
                    f"cannot reach {self.url} ({exc.__class__.__name__}); is the API running (make run), "
                    "and is PQH_URL right?",
                    EXIT_SERVER,
                    None,
                    "unreachable",
                )
            if response.status_code not in RETRIED_STATUSES or attempt >= RETRIES:
                break
            delay = retry_delay(response.headers.get("Retry-After"), attempt, self.clock())
            if delay > MAX_RETRY_AFTER:
                break
            attempt += 1
            click.echo(f"pqh: {response.status_code} from the API; retry {attempt}/{RETRIES} in {delay:g}s", err=True)
            self.sleep(delay)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            if response.status_code in ok:
                self.fail(
                    f"{response.status_code} but not JSON: {response.text[:200]!r}",
                    EXIT_SERVER,
                    response.status_code,
                    "bad_response",
                )
            payload = {}
        if response.status_code not in ok:
            error = str(payload.get("error") or "http_error")
            detail = str(payload.get("message") or payload.get("Message") or response.text[:200])
            hint = ""
            if response.status_code in RETRIED_STATUSES and response.headers.get("Retry-After"):
                hint = f" (retry after {response.headers['Retry-After']}s)"
            elif response.status_code in (401, 403):
                sent_from = "PQH_ADMIN_TOKEN" if admin and os.environ.get("PQH_ADMIN_TOKEN") else "PQH_API_KEY"
                hint = (
                    f" (pqh sent {sent_from})" if token else f" (set {'PQH_ADMIN_TOKEN' if admin else 'PQH_API_KEY'})"
                )
            self.fail(
                f"{response.status_code} {error}: {detail}{hint}",
                exit_code_for(response.status_code),
                response.status_code,
                error,
                detail,
            )
        return payload


def _json_mode(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    api = ctx.find_object(Api)
    if value and api is not None:
        api.as_json = True


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--json, on the group and on every command: the API's JSON on stdout, errors as JSON on stderr."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        is_eager=False,
        callback=_json_mode,
        help="print the API's JSON on stdout (and errors as JSON on stderr)",
    )(command)


def emit(api: Api, body: Any, human: Callable[[], None]) -> None:
    """The API's JSON on stdout with --json, else what ``human()`` prints."""
    if api.as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        human()


def describe(body: dict[str, Any]) -> str:
    status = str(body["task_status"])
    if status == "PENDING" and "queue_position" in body:
        return f"PENDING  position {body['queue_position']} (approx.), starts in ~{body['eta_seconds']:.1f}s"
    if status == "STARTED":
        return "STARTED  running" + (" (cancel requested)" if body.get("cancel_requested") else "")
    return status


def version() -> str:
    """The installed package's version; the source's when run from a checkout."""
    try:
        return metadata.version("pqh")
    except metadata.PackageNotFoundError:
        return __version__


@click.group(epilog=HELP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", envvar="PQH_URL", default="http://127.0.0.1:8000", show_default=True, show_envvar=True, help="the pqh API"
)
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON on stdout (and errors as JSON on stderr)")
@click.version_option(version(), "--version", prog_name="pqh", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, url: str, as_json: bool) -> None:
    """pqh: submit tasks, follow them, cancel them, set weights."""
    # Tests pass obj={"sleep": ...} so retries do not sleep.
    overrides = ctx.obj if isinstance(ctx.obj, dict) else {}
    ctx.obj = Api(
        url,
        os.environ.get("PQH_API_KEY"),
        os.environ.get("PQH_ADMIN_TOKEN"),
        sleep=overrides.get("sleep", time.sleep),
    )
    ctx.obj.as_json = as_json


@cli.command()
@click.argument("user_id")
@click.argument("x", default="null")
@click.option("--wait", is_flag=True, help="follow the task until it finishes, then print its result")
@click.option("--every", default=0.5, show_default=True, help="seconds between checks while waiting")
@click.option(
    "--idempotency-key",
    help="retrying with the same key returns the same task instead of a new one "
    "(default: a fresh key per command, so its own retries never submit twice)",
)
@json_option
@click.pass_obj
def submit(api: Api, user_id: str, x: str, wait: bool, every: float, idempotency_key: str | None) -> None:
    """Submit a task for USER_ID with input X (JSON; a bare word is taken as a string).

    Prints the task id (with --wait, the task's result). With API keys
    (PQH_API_KEY), USER_ID must be the key's user.
    """
    try:
        value = json.loads(x)
    except ValueError:
        value = x
    # The same key on each retry of a 429/503: a submit the API stored before it
    # answered 503 comes back instead of being stored twice.
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    body = api.call("POST", "/task", {"x": value, "user_id": user_id}, ok=(202,), headers=headers)
    if wait:
        click.echo(f"task {body['task_id']} queued at level {body['priority_level']}", err=True)
        follow(api, body["task_id"], every)
        return
    emit(api, body, lambda: click.echo(body["task_id"]))
    if not api.as_json:
        click.echo(f"task {body['task_id']} queued at level {body['priority_level']}", err=True)


def follow(api: Api, task_id: str, every: float) -> None:
    """Poll until the task finishes (progress on stderr), then print its result on stdout."""
    if sys.stderr.isatty() and not api.as_json:
        body = follow_with_bar(api, task_id, every)
    else:
        last = ""
        while True:
            body = api.call("GET", f"/result/{segment(task_id)}")
            line = describe(body)
            if line != last and not api.as_json:
                click.echo(line, err=True)
                last = line
            if body["task_status"] in DONE:
                break
            time.sleep(every)
    emit(api, body, lambda: click.echo(json.dumps(body["task_result"], indent=2)))
    if body["task_status"] != "SUCCESS":
        if not api.as_json:
            click.echo(f"pqh: task {task_id} finished {body['task_status']}", err=True)
        sys.exit(EXIT_TASK_DID_NOT_SUCCEED)


def follow_with_bar(api: Api, task_id: str, every: float) -> dict[str, Any]:
    """The bar fills as the tasks ahead of this one start; then it shows the run (on stderr)."""
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False, console=Console(stderr=True)) as progress:
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
@json_option
@click.pass_obj
def result(api: Api, task_id: str, wait: bool) -> None:
    """Show a task's status, position and ETA, and its result once it has finished."""
    if wait:
        follow(api, task_id, 0.5)
        return
    body = api.call("GET", f"/result/{segment(task_id)}")

    def human() -> None:
        click.echo(describe(body))
        if body["task_status"] in DONE:
            click.echo(json.dumps(body.get("task_result"), indent=2))

    emit(api, body, human)


@cli.command()
@click.argument("task_id")
@json_option
@click.pass_obj
def cancel(api: Api, task_id: str) -> None:
    """Cancel a queued task, or ask a running one to stop."""
    body = api.call("DELETE", f"/task/{segment(task_id)}")
    emit(api, body, lambda: click.echo(f"{task_id}: {describe(body)}"))


@cli.command()
@click.argument("user_id")
@click.argument("weight", type=int)
@json_option
@click.pass_obj
def weight(api: Api, user_id: str, weight: int) -> None:
    """Set a user's weight (needs PQH_ADMIN_TOKEN)."""
    body = api.call("PUT", f"/admin/users/{segment(user_id)}/weight", {"weight": weight})
    emit(api, body, lambda: click.echo(json.dumps(body)))


@cli.command()
@json_option
@click.pass_obj
def stats(api: Api) -> None:
    """Queues, capacity, totals, top users and recent tasks (GET /stats)."""
    body = api.call("GET", "/stats")
    emit(api, body, lambda: show_stats(body))


def show_stats(body: dict[str, Any]) -> None:
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
@json_option
@click.pass_obj
def key_issue(api: Api, user_id: str, admin: bool) -> None:
    """Issue an API key for USER_ID and print it. It is shown once: only its hash is stored."""
    body = api.call("POST", "/admin/keys", {"user_id": user_id, "admin": admin}, ok=(201,))

    def human() -> None:
        click.echo(f"key for {body['user_id']}{' (admin)' if body['admin'] else ''}; id {body['key_id']}", err=True)
        click.echo(body["api_key"])

    emit(api, body, human)


@key.command("revoke")
@click.argument("key_id")
@json_option
@click.pass_obj
def key_revoke(api: Api, key_id: str) -> None:
    """Revoke the key whose id (its SHA-256) is KEY_ID."""
    body = api.call("DELETE", f"/admin/keys/{segment(key_id)}")
    emit(api, body, lambda: click.echo(f"revoked {key_id}"))


@cli.group()
def dlq() -> None:
    """Dead letters: failed tasks, per priority level (needs PQH_ADMIN_TOKEN)."""


@dlq.command("show")
@click.argument("level", type=click.IntRange(0, 5))
@json_option
@click.pass_obj
def dlq_show(api: Api, level: int) -> None:
    """Show up to 10 dead letters of LEVEL and why their tasks failed (they stay there)."""
    body = api.call("GET", f"/admin/dead-letters/{level}")

    def human() -> None:
        click.echo(f"level {level}: about {body['dead_letters']} dead letters")
        for m in body["messages"]:
            click.echo(f"  {m['task_id']}  user={m['user_id']}  {m['task_status']}  {m['reason']}")

    emit(api, body, human)


@dlq.command("redrive")
@click.argument("level", type=click.IntRange(0, 5))
@json_option
@click.pass_obj
def dlq_redrive(api: Api, level: int) -> None:
    """Queue LEVEL's failed tasks again (up to 100 per call)."""
    body = api.call("POST", f"/admin/dead-letters/{level}/redrive")
    emit(
        api,
        body,
        lambda: click.echo(
            f"level {level}: {body['redriven']} queued again, {body['dropped']} dropped (task gone or finished)"
        ),
    )


@dlq.command("purge")
@click.argument("level", type=click.IntRange(0, 5))
@click.option("--yes", is_flag=True, help="do not ask")
@json_option
@click.pass_obj
def dlq_purge(api: Api, level: int, yes: bool) -> None:
    """Delete LEVEL's dead letters; their tasks stay FAILURE."""
    if not yes:
        click.confirm(f"purge the dead letters of level {level}?", abort=True, err=True)
    body = api.call("DELETE", f"/admin/dead-letters/{level}")
    emit(api, body, lambda: click.echo(f"level {level}: purged about {body['purged']} dead letters"))


def main() -> None:
    cli(prog_name="pqh")


if __name__ == "__main__":
    main()
