"""The settings table (embed_common/settings.py) is the only list: parsers, variables, up's children's argv,
the front's Limits and /info's limits all come from it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from embed_common import settings as table
from supervisor import cli

# worker options that make sense only for a worker on another machine (a LAN worker), never for up's own
LAN_WORKER_ONLY = {"broker-key", "key"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith(table.ENV_PREFIX)]:
        monkeypatch.delenv(name)
    yield


def test_one_row_per_option_of_each_command() -> None:
    for part in table.PARTS:
        names = [s.name for s in table.for_part(part)]
        assert len(names) == len(set(names)), part


def test_every_option_of_a_part_can_be_set_through_up() -> None:
    missing = {(part, s.name) for part in ("front", "broker", "worker") for s in table.for_part(part)
               if "up" not in s.parts and not s.planned and s.name not in LAN_WORKER_ONLY}
    assert missing == set()


def test_up_hands_each_child_the_options_it_takes() -> None:
    args = cli.build_parser().parse_args(["up", "--http-threads", "7", "--max-texts", "9", "--capacity", "64",
                                          "--token-budget", "4096", "--max-queue-texts", "5", "--insecure",
                                          "--log-level", "DEBUG"])
    front, broker, worker = (table.child_argv(args, part) for part in ("front", "broker", "worker"))
    assert front[front.index("--http-threads") + 1] == "7" and front[front.index("--max-texts") + 1] == "9"
    assert "--insecure" in front and "--capacity" not in front
    assert worker[worker.index("--capacity") + 1] == "64" and worker[worker.index("--token-budget") + 1] == "4096"
    assert broker[broker.index("--max-queue-texts") + 1] == "5" and "--max-texts" not in broker
    for argv, part in ((front, "front"), (broker, "broker"), (worker, "worker")):
        assert argv[argv.index("--log-level") + 1] == "DEBUG"
        child = cli.build_parser().parse_args([part, *argv])  # every flag is one the child takes
        assert child.log_level == "DEBUG"


def test_limits_and_info_come_from_the_limit_rows() -> None:
    fields = [f.name for f in dataclasses.fields(table.Limits)]
    assert fields == [s.dest for s in table.SETTINGS if s.limit]
    args = cli.build_parser().parse_args(["front", "--max-texts", "12", "--pdf-timeout", "3"])
    limits = table.limits_of(args)
    assert (limits.max_texts, limits.pdf_timeout, limits.max_body_bytes) == (12, 3.0, 16 * 1024 * 1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_texts = 1  # type: ignore[misc]


def test_a_part_dataclass_starts_from_the_table() -> None:
    from broker.broker import BrokerSettings
    from http_front.main import FrontSettings
    from supervisor.supervisor import ClusterSettings
    from worker.worker import WorkerSettings

    assert FrontSettings("x").port == ClusterSettings().port == table.DEFAULT_PORT
    assert WorkerSettings("x").model == ClusterSettings().model == table.DEFAULT_MODEL
    assert BrokerSettings("a", "b").max_queue_texts == table.default("max-queue-texts", "broker")
    assert FrontSettings("x").threads == table.default("http-threads", "front")


def test_a_parts_settings_are_built_through_the_table() -> None:
    from broker.broker import BrokerSettings
    from worker.worker import WorkerSettings

    args = cli.build_parser().parse_args(["worker", "--broker", "tcp://h:1", "--capacity", "64", "--threads", "3",
                                          "--worker-id", "w7", "--parent-pid", "9"])
    worker = table.settings_of(WorkerSettings, args, "worker")
    assert (worker.broker, worker.capacity, worker.threads, worker.worker_id, worker.parent_pid) == (
        "tcp://h:1", 64, 3, "w7", 9)
    assert worker.max_batch == WorkerSettings("x").max_batch  # not a setting: the dataclass default
    args = cli.build_parser().parse_args(["broker", "--max-queue-texts", "5", "--job-lease", "7"])
    broker = table.settings_of(BrokerSettings, args, "broker", client_address="a", worker_address="b")
    assert (broker.max_queue_texts, broker.job_lease, broker.client_address) == (5, 7.0, "a")
    with pytest.raises(TypeError, match="no field"):
        table.settings_of(BrokerSettings, args, "broker", client_address="a", worker_address="b", colour=1)


def test_lan_needs_keys_is_refused_by_up_and_broker_alike(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("up", "broker"):
        with pytest.raises(SystemExit) as stopped:
            cli.main([command, "--lan", "0.0.0.0:8424"])
        assert "--lan needs --keys" in str(stopped.value.code), command
