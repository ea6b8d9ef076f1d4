"""`make run` picks its DynamoDB emulator: dynalite where Node.js has it, moto's server elsewhere, with a notice."""

from __future__ import annotations

from pathlib import Path

import pytest

from local.emulator import DynaliteServer, EmulatorError, MotoServer, dynalite_missing, dynamodb_emulator_kind

INSTALLED, NOT_INSTALLED = Path(__file__), Path(__file__).with_name("no-such-dynalite.js")


def NODE(name: str) -> str | None:
    return f"/usr/bin/{name}"


def NO_NODE(name: str) -> str | None:
    return None


def test_dynalite_is_the_default_where_node_and_dynalite_are_installed() -> None:
    missing = dynalite_missing(NODE, INSTALLED)
    assert missing is None
    assert dynamodb_emulator_kind("", missing) == ("dynalite", None)


def test_without_node_it_falls_back_to_moto_with_one_line_naming_the_reason() -> None:
    missing = dynalite_missing(NO_NODE, INSTALLED)
    kind, notice = dynamodb_emulator_kind("", missing)
    assert kind == "moto"
    assert notice is not None and "\n" not in notice
    assert notice.startswith("Node.js is not on PATH: DynamoDB runs on moto's server")


def test_without_dynalite_installed_it_falls_back_to_moto_too() -> None:
    kind, notice = dynamodb_emulator_kind("", dynalite_missing(NODE, NOT_INSTALLED))
    assert kind == "moto" and notice is not None and "make venv" in notice


def test_an_explicit_choice_is_kept_without_a_notice() -> None:
    without_node = dynalite_missing(NO_NODE, NOT_INSTALLED)
    assert dynamodb_emulator_kind("moto", None) == ("moto", None)
    # Asked for by name, dynalite is tried (and fails to start with its own message), not replaced.
    assert dynamodb_emulator_kind("dynalite", without_node) == ("dynalite", None)


def test_an_unknown_emulator_is_refused_by_name() -> None:
    with pytest.raises(EmulatorError, match="PQH_DYNAMODB_EMULATOR='redis': use dynalite or moto"):
        dynamodb_emulator_kind("redis", None)


def test_the_unset_variable_reads_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from local import emulator

    monkeypatch.delenv("PQH_DYNAMODB_EMULATOR", raising=False)
    monkeypatch.setattr(emulator, "dynalite_missing", lambda: dynalite_missing(NO_NODE, INSTALLED))
    assert isinstance(emulator.dynamodb_emulator("127.0.0.1", 1), MotoServer)
    monkeypatch.setattr(emulator, "dynalite_missing", lambda: dynalite_missing(NODE, INSTALLED))
    assert isinstance(emulator.dynamodb_emulator("127.0.0.1", 1), DynaliteServer)
