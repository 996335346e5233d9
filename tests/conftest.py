"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKET_ENV = "HASHBENCH_MARKET_ROOT"
MARKET_DEFAULT = REPO_ROOT.parent / "shared" / "datasets" / "Market-1501-v15.09.15.zip"


@pytest.fixture(scope="session")
def market_root() -> Path:
    """The real Market-1501 (zip or folder): ``$HASHBENCH_MARKET_ROOT``, else ``../shared/datasets/...zip``.

    Skips the test when neither exists.
    """
    env = os.environ.get(MARKET_ENV)
    path = Path(env).expanduser() if env else MARKET_DEFAULT
    if not path.exists():
        where = f"${MARKET_ENV}={env}" if env else f"{MARKET_DEFAULT} (set ${MARKET_ENV})"
        pytest.skip(f"Market-1501 not found: {where}")
    return path
