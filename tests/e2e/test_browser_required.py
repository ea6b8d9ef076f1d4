"""CI's guard: with PQH_REQUIRE_BROWSER=1, a missing browser fails the dashboard test instead of skipping it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_TEST = "tests/e2e/test_dashboard_browser.py"


def run_dashboard_test(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PQH_CHROMIUM": "/nonexistent/chromium", **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", DASHBOARD_TEST],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_browser_fails_the_run_when_it_is_required() -> None:
    run = run_dashboard_test(PQH_REQUIRE_BROWSER="1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 error" in run.stdout and "/nonexistent/chromium is missing" in run.stdout


def test_a_missing_browser_skips_when_it_is_not_required() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "PQH_REQUIRE_BROWSER"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", DASHBOARD_TEST],
        cwd=ROOT,
        env={**environment, "PQH_CHROMIUM": "/nonexistent/chromium"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout
