"""Settings from the command line and EMBED_* variables (supervisor/cli.py): every flag of the cluster's
commands reads its variable, the command line wins, and unknown or invalid settings stop with a clear message."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor import cli

COMMANDS = ("up", "broker", "front", "worker")
CANDIDATES = ("7", "3", "2.5", "0.99", "0.9", "cpu", "cuda:1", "DEBUG", "tcp://127.0.0.1:9999", "some-value",
              "http://localhost:3000")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith(cli.ENV_PREFIX)]:
        monkeypatch.delenv(name)
    yield


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(command: str) -> list[argparse.Action]:
    parser = subparsers(cli.build_parser())[command]
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def env_name(action: argparse.Action) -> str:
    flag = next(s for s in action.option_strings if s.startswith("--"))
    return cli.ENV_PREFIX + flag[2:].upper().replace("-", "_")


def values_for(action: argparse.Action, count: int) -> list[tuple[str, Any]]:
    """``count`` raw strings the flag accepts, each with the value it parses to, none the default."""
    if action.nargs == 0:  # a store_true flag
        return [("1", True)]
    found: list[tuple[str, Any]] = []
    for raw in (*(map(str, action.choices or ())), *CANDIDATES):
        try:
            value = action.type(raw) if callable(action.type) else raw
        except (TypeError, ValueError):
            continue
        if value != action.default and (action.choices is None or value in action.choices) \
                and value not in [v for _, v in found]:
            found.append((raw, value))
    assert len(found) >= count, f"no test values for {action.option_strings}"
    return found[:count]


def all_options() -> list[tuple[str, argparse.Action]]:
    return [(command, action) for command in COMMANDS for action in options(command)]


@pytest.mark.parametrize(("command", "action"), all_options(),
                         ids=[f"{c}{a.option_strings[0]}" for c, a in all_options()])
def test_every_flag_reads_its_variable_and_the_command_line_wins(
        monkeypatch: pytest.MonkeyPatch, command: str, action: argparse.Action) -> None:
    name = env_name(action)
    if action.help != argparse.SUPPRESS:
        assert f"[env {name}]" in (action.help or ""), f"--help does not name {name}: {action.help!r}"
    values = values_for(action, 1 if action.nargs == 0 else 2)
    (raw, value) = values[0]
    monkeypatch.setenv(name, raw)
    args = cli.build_parser().parse_args([command])
    assert getattr(args, action.dest) == value, f"{name}={raw} did not set {action.dest}"
    cli.check_environment()  # a known name passes
    if action.nargs == 0:
        monkeypatch.setenv(name, "0")
        assert getattr(cli.build_parser().parse_args([command]), action.dest) is False
        return
    (flag_raw, flag_value) = values[1]
    args = cli.build_parser().parse_args([command, action.option_strings[0], flag_raw])
    assert getattr(args, action.dest) == flag_value, "the command line must win over the environment"


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_PORT", "")
    assert cli.build_parser().parse_args(["up"]).port == 8421


def test_an_unknown_variable_is_rejected_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_COLOUR", "blue")
    monkeypatch.setenv("EMBED_PORT", "9000")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["up"])  # stops before starting anything
    unknown, known = str(stopped.value.code).split("known:")
    assert "unknown setting" in unknown and "EMBED_COLOUR" in unknown and "EMBED_PORT" not in unknown
    assert "EMBED_PORT" in known  # the message lists the names that do exist


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("EMBED_PORT", "abc", "EMBED_PORT='abc' is not a valid value for --port"),
    ("EMBED_WORKERS", "-1", "EMBED_WORKERS='-1'"),
    ("EMBED_WORKERS", "two", "EMBED_WORKERS='two'"),
    ("EMBED_REQUEST_TIMEOUT", "0", "EMBED_REQUEST_TIMEOUT='0'"),
    ("EMBED_PRECISION", "fp64", "choose from auto, fp32, bf16, fp16, fp16w"),
    ("EMBED_LOG_LEVEL", "LOUD", "choose from"),
    ("EMBED_DEVICE", "gpu", "EMBED_DEVICE='gpu'"),
])
def test_an_invalid_variable_is_rejected(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         name: str, raw: str, says: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SystemExit) as stopped:
        cli.build_parser().parse_args(["up"])
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["up", "--port", "abc"],
    ["up", "--workers", "many"],
    ["up", "--precision", "fp64"],
    ["up", "--device", "gpu"],
    ["up", "--device", "cuda:x"],
    ["worker", "--device", "tpu"],
    ["up", "--request-timeout", "-5"],
    ["up", "--no-such-flag"],
])
def test_an_invalid_flag_is_rejected(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.build_parser().parse_args(argv)
    assert stopped.value.code == 2
    assert re.search(r"error: .*" + re.escape(argv[1]), capsys.readouterr().err)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_every_documented_device_is_accepted(device: str) -> None:
    assert cli.build_parser().parse_args(["up", "--device", device]).device == device
