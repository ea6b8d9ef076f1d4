"""JSON shapes of the HTTP contract (the old service's fields, plus a few): only this module shapes JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from chalicelib.domain import FAILURE, SUCCESS, DeadLetters, IssuedKey, Stats, Submitted, Task, UserStanding


def submitted(answer: Task | Submitted) -> dict[str, Any]:
    if isinstance(answer, Task):
        answer = Submitted.of(answer)
    return {
        "task_id": answer.task_id,
        "result_url": f"/result/{answer.task_id}",
        "user_id": answer.user_id,
        "priority_level": answer.priority_level,
        "task_status": answer.task_status,
    }


def result(task: Task, progress: Any = None) -> dict[str, Any]:
    task_result: Any = None
    if task.task_status == SUCCESS:
        task_result = task.result
    elif task.task_status == FAILURE:
        task_result = {"error": task.error}
    return {
        "task_id": task.task_id,
        "task_status": task.task_status,
        "task_result": task_result,
        "priority_level": task.priority_level,
        "submitted_at": task.submitted_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        **({"cancel_requested": True} if task.cancel_requested and task.task_status == "STARTED" else {}),
        **(
            {
                "queue_position": progress.queue_position,
                "queue_position_approximate": True,
                "eta_seconds": round(progress.eta_seconds, 3),
            }
            if progress is not None
            else {}
        ),
    }


def user(standing: UserStanding) -> dict[str, Any]:
    return {
        "user_id": standing.user_id,
        "count_in_window": standing.count_in_window,
        "weight": standing.weight,
        "next_priority_level": standing.next_priority_level,
    }


def issued_key(issued: IssuedKey) -> dict[str, Any]:
    return {"api_key": issued.api_key, "key_id": issued.key_id, "user_id": issued.user_id, "admin": issued.admin}


def dead_letters(look: DeadLetters) -> dict[str, Any]:
    return {
        "level": look.level,
        "dead_letters": look.dead_letters,
        "messages": [
            {"task_id": m.task_id, "user_id": m.user_id, "reason": m.reason, "task_status": m.task_status}
            for m in look.messages
        ],
    }


def stats(s: Stats) -> dict[str, Any]:
    return {
        "generated_at": s.generated_at,
        "policy": s.policy,
        "capacity": s.capacity,
        "slots_held": s.slots_held,
        "running": s.slots_held,  # the old name of slots_held
        "queues": [
            {
                "level": q.level,
                "queued": q.queued,
                "running": q.running,
                "received_not_deleted": q.received_not_deleted,
                "in_flight": q.received_not_deleted,  # the old name of received_not_deleted
                "counted": q.counted,
                "dead_letters": q.dead_letters,
                "oldest_seconds": None if q.oldest_seconds is None else round(q.oldest_seconds, 1),
            }
            for q in s.queues
        ],
        "tasks": asdict(s.tasks),
        "users": [
            {
                "user_id": u.user_id,
                "count_in_window": u.count_in_window,
                "weight": u.weight,
                "priority_level": u.priority_level,
                "queued": u.queued,
            }
            for u in s.users
        ],
        "users_truncated": s.users_truncated,
        "recent": [
            {
                "task_id": t.task_id,
                "user_id": t.user_id,
                "task_status": t.task_status,
                "priority_level": t.priority_level,
                "finished_at": t.finished_at,
                "wait_seconds": _rounded(t.wait_seconds),
                "run_seconds": _rounded(t.run_seconds),
                "error": t.error,
            }
            for t in s.recent
        ],
        "wait_seconds": {"p50": _rounded(s.wait_p50), "p90": _rounded(s.wait_p90), "max": _rounded(s.wait_max)},
        "run_seconds_average": _rounded(s.run_seconds_average),
    }


def dispatch_report(report: Any) -> dict[str, Any]:
    return {"free_slots": report.free_slots, "workers_started": report.workers_started, "backlog": list(report.backlog)}


def worker_report(report: Any) -> dict[str, Any]:
    return {"outcomes": list(report.outcomes), "levels": list(report.levels), "stopped_because": report.stopped_because}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
