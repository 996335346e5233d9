"""Shared pytest fixtures."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass
class SyntheticBench:
    """A small synthetic re-id set, prepared once per session: views for methods and a scorer."""

    prepared: object

    def view(self, split: str, consumes=frozenset({"features"})):
        return self.prepared.view(split, frozenset(consumes))

    def context(self):
        """The training context, lending the IDE stage's top (the deep methods' default ``init="ide"``)."""
        return self.prepared.context({"ide"})

    def score(self, method) -> float:
        """mAP (%) of a fitted method's codes on the query/gallery splits."""
        consumes = type(method).consumes
        q = method.encode(self.view("query", consumes))
        g = method.encode(self.view("gallery", consumes))
        return self.prepared.evaluate(q, g, "numpy")[0].to_dict()["map"]


@pytest.fixture(scope="session")
def synthetic_bench(tmp_path_factory) -> SyntheticBench:
    """Synthetic pedestrians (60 train / 60 test ids, 128x64) through the trunk cache and a short IDE stage.

    Provides the inputs every method may consume: adapted ``features``, trunk ``maps``, ``attributes``,
    and the IDE stage's top (``ide``).
    """
    from hashbench.ide import IDEConfig
    from hashbench.pipeline import Pipeline, RunConfig

    config = RunConfig(
        dataset="synthetic",
        dataset_options={"n_train_ids": 60, "n_test_ids": 60},
        ide=IDEConfig(epochs=4, batch_size=32),
        device="cpu",
        progress=False,
        cache_dir=tmp_path_factory.mktemp("synthetic-cache"),
    )
    return SyntheticBench(Pipeline.setup(config).load({"features", "maps", "attributes", "ide"}))


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where the browser tests write their screenshots: ``$HASHBENCH_SCREENSHOTS`` (CI keeps
    .ci/artifacts/screenshots), else a temporary folder."""
    folder = os.environ.get("HASHBENCH_SCREENSHOTS")
    out = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out
