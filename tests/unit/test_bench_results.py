"""A benchmark run leaves its latest result under a stable name; timestamped runs stay out of git."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import saved

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_is_the_latest_result_and_a_timestamped_copy_in_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saved, "RESULTS", tmp_path)
    monkeypatch.setattr(saved, "RUNS", tmp_path / "runs")
    latest = saved.save("demo", {"rows": [1]})
    saved.save("demo", {"rows": [2]})
    assert latest == tmp_path / "demo-latest.json"
    assert json.loads(latest.read_text()) == {"rows": [2]}
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs and all(name.startswith("demo-2") and name.endswith(".json") for name in runs)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_git_ignores_timestamped_runs_and_keeps_the_latest() -> None:
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert ignored("bench/results/runs/deep-20261201-224847.json")
    assert ignored("bench/results/fairness-20261201-220806.json")  # written there by bench/fairness.py
    assert not ignored("bench/results/deep-latest.json")
    assert not ignored("bench/results/fairness-priority.png")
