"""CloudWatch alarms and a dashboard for the packaged template (merged by infra.merge_template).

The alarms use only AWS's own metrics (SQS, Lambda, API Gateway); the dashboard
adds the functions' own (namespace ``pqh``, in embedded metric format from their
logs: chalicelib/observability.py). The thresholds come from the stage's
``pqh_monitoring`` block in .chalice/config.json; notifications go to an SNS topic
only when the template's AlarmEmail or AlarmTopicArn parameter is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalicelib import observability
from chalicelib.policy import LEVELS
from infra.iam import ROOT

# Level 0 is the least-used users'; the others wait longer by design, so their
# oldest task may be older before anyone is told.
DEFAULT_OLDEST_TASK_ALARM_SECONDS = (900, 1800, 3600, 7200, 14400, 28800)
PERIOD_SECONDS = 300  # one evaluation period: standard resolution, the cheapest alarm
NO_VALUE = {"Ref": "AWS::NoValue"}
# The dashboard's metrics, as on /dashboard: (widget title, y-axis label).
DASHBOARD_WIDGETS = (
    ("Queued tasks per level", "tasks"),
    ("Running", "tasks"),
    ("Dead letters per level", "messages"),
    ("Throughput: tasks taken off the queues (finished or cancelled)", "tasks per minute"),
    ("Oldest queued task per level", "seconds"),
    ("Errors", "count per 5 minutes"),
    ("Wait from submit to start per level (p50, p95)", "seconds"),
    ("AWS throttles seen, lost races, dead letters", "count per 5 minutes"),
)


@dataclass(frozen=True)
class AlarmSettings:
    """A stage's alarm thresholds and default notification address."""

    oldest_task_seconds: tuple[int, ...] = DEFAULT_OLDEST_TASK_ALARM_SECONDS
    worker_errors: int = 1  # errors in five minutes
    worker_throttles: int = 1
    api_5xx: int = 5
    email: str = ""


class MonitoringConfigError(Exception):
    """The stage's pqh_monitoring block is malformed; the message names the key."""


def stage_alarm_settings(stage: str) -> AlarmSettings:
    """The stage's ``pqh_monitoring`` block of .chalice/config.json (defaults where absent)."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    block = config["stages"][stage].get("pqh_monitoring", {})
    return alarm_settings(block)


def alarm_settings(block: dict[str, Any]) -> AlarmSettings:
    unknown = set(block) - {"oldest_task_alarm_seconds", "worker_errors", "worker_throttles", "api_5xx", "email"}
    if unknown:
        raise MonitoringConfigError(f"pqh_monitoring: unknown keys {sorted(unknown)}")
    oldest = tuple(block.get("oldest_task_alarm_seconds", DEFAULT_OLDEST_TASK_ALARM_SECONDS))
    if len(oldest) != LEVELS or not all(isinstance(s, int) and s >= 60 for s in oldest):
        raise MonitoringConfigError(
            f"pqh_monitoring.oldest_task_alarm_seconds must be {LEVELS} whole numbers of seconds, each at least 60"
        )
    counts = {}
    for key in ("worker_errors", "worker_throttles", "api_5xx"):
        value = block.get(key, getattr(AlarmSettings, key))
        if not isinstance(value, int) or value < 1:
            raise MonitoringConfigError(f"pqh_monitoring.{key} must be a whole number, at least 1")
        counts[key] = value
    email = block.get("email", "")
    if not isinstance(email, str):
        raise MonitoringConfigError("pqh_monitoring.email must be a string ('' for no email)")
    return AlarmSettings(oldest_task_seconds=oldest, email=email, **counts)


def parameters(settings: AlarmSettings) -> dict[str, Any]:
    return {
        "AlarmEmail": {
            "Type": "String",
            "Default": settings.email,
            "Description": "An email address the alarms notify through a new SNS topic ('' for none)",
        },
        "AlarmTopicArn": {
            "Type": "String",
            "Default": "",
            "Description": "An existing SNS topic the alarms notify ('' for none)",
        },
    }


CONDITIONS = {
    "AlarmEmailGiven": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]},
    "AlarmTopicGiven": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]},
}


def _actions() -> list[Any]:
    """The topics an alarm notifies: none unless an email or a topic is given."""
    return [
        {"Fn::If": ["AlarmEmailGiven", {"Ref": "AlarmTopic"}, NO_VALUE]},
        {"Fn::If": ["AlarmTopicGiven", {"Ref": "AlarmTopicArn"}, NO_VALUE]},
    ]


def _alarm(
    description: str,
    namespace: str,
    metric: str,
    dimensions: list[dict[str, Any]],
    statistic: str,
    threshold: int,
    comparison: str,
) -> dict[str, Any]:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": description,
            "Namespace": namespace,
            "MetricName": metric,
            "Dimensions": dimensions,
            "Statistic": statistic,
            "Period": PERIOD_SECONDS,
            "EvaluationPeriods": 1,
            "Threshold": threshold,
            "ComparisonOperator": comparison,
            # No data is no trouble: an idle queue publishes nothing.
            "TreatMissingData": "notBreaching",
            "AlarmActions": _actions(),
            "OKActions": _actions(),
        },
    }


def _queue(logical: str) -> list[dict[str, Any]]:
    return [{"Name": "QueueName", "Value": {"Fn::GetAtt": [logical, "QueueName"]}}]


def alarms(settings: AlarmSettings, api_stage: str) -> dict[str, Any]:
    """Dead letters and the oldest queued task per level; worker errors and throttles; API 5xx."""
    found: dict[str, Any] = {}
    for level in range(LEVELS):
        found[f"Level{level}DeadLettersAlarm"] = _alarm(
            f"Level {level} has dead letters: tasks that failed (pqh dlq show {level})",
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            _queue(f"Level{level}DeadLetterQueue"),
            "Maximum",
            0,
            "GreaterThanThreshold",
        )
        seconds = settings.oldest_task_seconds[level]
        found[f"Level{level}OldestTaskAlarm"] = _alarm(
            f"Level {level}'s oldest queued task has waited more than {seconds} s",
            "AWS/SQS",
            "ApproximateAgeOfOldestMessage",
            _queue(f"Level{level}Queue"),
            "Maximum",
            seconds,
            "GreaterThanThreshold",
        )
    worker = [{"Name": "FunctionName", "Value": {"Ref": "Worker"}}]
    found["WorkerErrorsAlarm"] = _alarm(
        f"The worker function failed {settings.worker_errors} or more times in 5 minutes",
        "AWS/Lambda",
        "Errors",
        worker,
        "Sum",
        settings.worker_errors,
        "GreaterThanOrEqualToThreshold",
    )
    found["WorkerThrottlesAlarm"] = _alarm(
        f"AWS throttled the worker function {settings.worker_throttles} or more times in 5 minutes",
        "AWS/Lambda",
        "Throttles",
        worker,
        "Sum",
        settings.worker_throttles,
        "GreaterThanOrEqualToThreshold",
    )
    found["Api5xxAlarm"] = _alarm(
        f"The API answered 5xx {settings.api_5xx} or more times in 5 minutes",
        "AWS/ApiGateway",
        "5XXError",
        [{"Name": "ApiName", "Value": {"Ref": "AWS::StackName"}}, {"Name": "Stage", "Value": api_stage}],
        "Sum",
        settings.api_5xx,
        "GreaterThanOrEqualToThreshold",
    )
    found["AlarmTopic"] = {
        "Type": "AWS::SNS::Topic",
        "Condition": "AlarmEmailGiven",
        "Properties": {"Subscription": [{"Endpoint": {"Ref": "AlarmEmail"}, "Protocol": "email"}]},
    }
    return found


def _per_level(metric: str, queue: str) -> list[list[Any]]:
    """One line per level; ${...} is filled in by Fn::Sub when the stack is created."""
    return [
        ["AWS/SQS", metric, "QueueName", f"${{{queue.format(level=level)}.QueueName}}", {"label": f"level {level}"}]
        for level in range(LEVELS)
    ]


def _widget(index: int, metrics: list[list[Any]], stat: str, period: int, stacked: bool) -> dict[str, Any]:
    title, unit = DASHBOARD_WIDGETS[index]
    return {
        "type": "metric",
        "x": (index % 2) * 12,
        "y": (index // 2) * 6,
        "width": 12,
        "height": 6,
        "properties": {
            "title": title,
            "view": "timeSeries",
            "stacked": stacked,
            "region": "${AWS::Region}",
            "stat": stat,
            "period": period,
            "metrics": metrics,
            "yAxis": {"left": {"label": unit, "showUnits": False, "min": 0}},
        },
    }


def _wait_times(stage: str) -> list[list[Any]]:
    """The functions' WaitTime per priority level, its median and 95th percentile."""
    return [
        [
            observability.NAMESPACE,
            observability.WAIT_TIME,
            "stage",
            stage,
            "priority_level",
            str(level),
            {"stat": stat, "label": f"level {level} {stat}"},
        ]
        for level in range(LEVELS)
        for stat in ("p50", "p95")
    ]


def _troubles(stage: str) -> list[list[Any]]:
    names = (
        (observability.THROTTLES, "AWS throttles seen (retried or not)"),
        (observability.PICK_RACES_LOST, "picks that lost a race"),
        (observability.SLOT_RACES_LOST, "slot claims that lost a race"),
        (observability.DEAD_LETTERS, "tasks dead-lettered"),
    )
    return [[observability.NAMESPACE, name, "stage", stage, {"label": label}] for name, label in names]


def dashboard_body(stage: str = "dev") -> dict[str, Any]:
    """What /dashboard shows, from CloudWatch: queued per level, running, dead letters, throughput; and waits."""
    running = [
        ["AWS/Lambda", "ConcurrentExecutions", "FunctionName", "${Worker}", {"label": "workers running"}],
        *[
            [
                "AWS/SQS",
                "ApproximateNumberOfMessagesNotVisible",
                "QueueName",
                f"${{Level{level}Queue.QueueName}}",
                {"label": f"level {level}: received, not deleted"},
            ]
            for level in range(LEVELS)
        ],
    ]
    errors = [
        ["AWS/Lambda", "Errors", "FunctionName", "${Worker}", {"label": "worker errors"}],
        ["AWS/Lambda", "Throttles", "FunctionName", "${Worker}", {"label": "worker throttles"}],
        ["AWS/ApiGateway", "5XXError", "ApiName", "${AWS::StackName}", "Stage", "${ApiStage}", {"label": "API 5xx"}],
    ]
    widgets = [
        _widget(0, _per_level("ApproximateNumberOfMessagesVisible", "Level{level}Queue"), "Maximum", 60, True),
        _widget(1, running, "Maximum", 60, False),
        _widget(
            2, _per_level("ApproximateNumberOfMessagesVisible", "Level{level}DeadLetterQueue"), "Maximum", 300, True
        ),
        _widget(3, _per_level("NumberOfMessagesDeleted", "Level{level}Queue"), "Sum", 60, True),
        _widget(4, _per_level("ApproximateAgeOfOldestMessage", "Level{level}Queue"), "Maximum", 60, False),
        _widget(5, errors, "Sum", 300, False),
        _widget(6, _wait_times(stage), "p50", 300, False),
        _widget(7, _troubles(stage), "Sum", 300, False),
    ]
    return {"widgets": widgets}


def dashboard(api_stage: str, stage: str = "dev") -> dict[str, Any]:
    body = json.dumps(dashboard_body(stage), separators=(",", ":"))
    return {
        "Type": "AWS::CloudWatch::Dashboard",
        "Properties": {
            "DashboardName": {"Fn::Sub": "${AWS::StackName}"},
            # ${ApiStage} is not a template name: Fn::Sub's variable map fills it in.
            "DashboardBody": {"Fn::Sub": [body, {"ApiStage": api_stage}]},
        },
    }


def _metric_stage(config: dict[str, Any], stage: str) -> str:
    """The stage dimension the functions publish under: the stage's PQH_STAGE."""
    variables = config["stages"][stage].get("environment_variables", {})
    return str(variables.get("PQH_STAGE") or config.get("environment_variables", {}).get("PQH_STAGE") or stage)


def monitoring(stage: str) -> dict[str, Any]:
    """Parameters, Conditions and Resources to merge into the packaged template."""
    settings = stage_alarm_settings(stage)
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    api_stage = str(config["stages"][stage].get("api_gateway_stage", "api"))
    return {
        "Parameters": parameters(settings),
        "Conditions": dict(CONDITIONS),
        "Resources": {**alarms(settings, api_stage), "Dashboard": dashboard(api_stage, _metric_stage(config, stage))},
    }
