"""The README's route and configuration tables are true copies of the tables in the code (http_front/routes.py,
embed_common/settings.py), as its error and PROGRESS tables are (tests/unit/test_errors.py, test_events.py);
`.ci/run` runs its Quick start: the install steps and, word for word, the test command."""

from __future__ import annotations

import argparse
from pathlib import Path

from embed_common import settings
from http_front import routes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(heading: str) -> str:
    """The README's ``## heading`` section, up to the next ``## `` heading."""
    return README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_in(text: str) -> str:
    """The first Markdown table in ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_the_route_table_is_the_one_routes_prints() -> None:
    assert table_in(section("Routes")) == routes.markdown_table(), "paste `python -m http_front.routes`"


def test_the_configuration_table_is_the_one_settings_prints() -> None:
    tables = [table_in(part) for part in section("Configuration").split("\n\n") if part.startswith("| ")]
    assert settings.markdown_table() in tables, "paste `python -m embed_common.settings`"


def test_every_option_has_its_row() -> None:
    rows = settings.markdown_table().splitlines()[2:]
    shown = [s for s in settings.SETTINGS if s.help != argparse.SUPPRESS]
    assert len(rows) == len(shown)
    assert all(row.startswith(f"| `{s.flag}` | `{s.env}` |") for s, row in zip(shown, rows, strict=True))


def quick_start_commands() -> tuple[str, str]:
    """The Quick start's two set-up commands: install and run, and test (its first two bash blocks but the curl)."""
    blocks = [b.split("```", 1)[0].strip() for b in section("Quick start").split("```bash\n")[1:]]
    install, test = [b for b in blocks if not b.startswith("curl")][:2]
    return install, test


def test_ci_runs_the_readmes_install_and_exactly_its_test_command() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text().splitlines()
    install, test = quick_start_commands()
    assert test in ci, "paste the README's test command into .ci/run as one line"
    steps = [step.strip() for step in install.split("&&")]
    assert steps[-1] == "embed-cluster up"
    for step in steps[:-1]:  # the same steps, pip quiet in CI
        assert step in ci or step.replace("pip install ", "pip install -q ") in ci, step
