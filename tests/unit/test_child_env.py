"""What the supervisor hands its children: the API key goes to the front alone (supervisor/supervisor.py)."""

from __future__ import annotations

import pytest

from supervisor.supervisor import child_env

KEY = "child-env-test-key"


def test_only_the_front_child_is_handed_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_API_KEY", KEY)
    assert child_env("front")["EMBED_API_KEY"] == KEY
    for kind in ("broker", "worker"):
        assert "EMBED_API_KEY" not in child_env(kind) and child_env(kind)["PYTHONUNBUFFERED"] == "1"
