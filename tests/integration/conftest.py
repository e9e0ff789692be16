"""Fixtures of the integration tier (tests/conftest.py has those both tiers share: the real cluster, the
reference model)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.faults import TextPool, short_texts


@pytest.fixture(scope="session")
def pool(reference_model: Any) -> TextPool:
    """Distinct short texts a load draws from, with the reference model's vectors of each, computed once for
    the session."""
    return TextPool(short_texts(240, seed=5), reference_model)
