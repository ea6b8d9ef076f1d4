"""JSON shapes of the HTTP contract (the old service's fields, plus a few)."""

from __future__ import annotations

from typing import Any

from chalicelib.domain import FAILURE, SUCCESS, Task


def submitted(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "result_url": f"/result/{task.task_id}",
        "user_id": task.user_id,
        "priority_level": task.priority_level,
        "task_status": task.task_status,
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


def dispatch_report(report: Any) -> dict[str, Any]:
    return {"free_slots": report.free_slots, "workers_started": report.workers_started, "backlog": list(report.backlog)}


def worker_report(report: Any) -> dict[str, Any]:
    return {"outcomes": list(report.outcomes), "levels": list(report.levels), "stopped_because": report.stopped_because}
