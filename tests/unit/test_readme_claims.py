"""The README's tables name what the service does: every error code it can answer is in the error table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_error_codes() -> set[str]:
    rows = re.findall(r"^\| (\d{3}|\dxx) \| (.+?) \|", (ROOT / "README.md").read_text(), flags=re.M)
    return {code for _, cell in rows for code in re.findall(r"`([a-z_]+)`", cell)}


def raised_error_codes() -> set[str]:
    domain = (ROOT / "chalicelib" / "domain.py").read_text()
    validation = (ROOT / "chalicelib" / "validation.py").read_text()
    codes = set(re.findall(r'^\s+code = "([a-z_]+)"', domain, flags=re.M))
    codes |= set(re.findall(r'_Invalid\(\s*"([a-z_]+)"', validation))
    codes |= set(re.findall(r'_error\(\s*\d{3},\s*"([a-z_]+)"', (ROOT / "app.py").read_text()))
    gateway = (ROOT / "chalicelib" / "gateway.py").read_text()
    codes |= set(re.findall(r'GatewayAnswer\(\d{3}, "([a-z_]+)"', gateway))
    template = (ROOT / "infra" / "merge_template.py").read_text()
    codes |= set(re.findall(r'"error": "([a-z_]+)"', template))  # API Gateway's own answers on AWS
    return codes


def test_every_error_code_the_service_answers_is_in_the_readme() -> None:
    raised = raised_error_codes()
    assert {"invalid_json", "too_many_queued", "busy", "invalid_path", "unauthorized", "throttled"} <= raised
    assert raised - readme_error_codes() == set()
