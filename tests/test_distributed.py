"""``--executor ray`` (:mod:`hashbench.distributed`) on a local Ray cluster started by the test (2 CPUs,
127.0.0.1): the CSVs and artifacts equal the local executor's (times aside), a worker killed mid-cell is
retried with no duplicate row, a partly finished folder resumes, and the options fail in one line.
Skipped where Ray is not installed (``pip install -e .[ray]``)."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hashbench.cli import main
from hashbench.distributed import require_cache
from hashbench.errors import HashbenchError
from hashbench.pipeline import Pipeline
from hashbench.runner import run

from .tiny import tiny_run_config

# shallow and deep cells: LSH, ITQ, and DBH (trains the backbone's top blocks on the cached maps)
GRID = dict(
    methods=["lsh", "itq", "dbh"],
    bits=[16, 32],
    method_params={"itq": {"n_iter": 3}, "dbh": {"epochs": 1}},
)
N_CELLS = 7  # 3 methods x 2 lengths, and the ide-float reference
# what differs between two computations of the same cell: when, how long, on how many threads
VOLATILE = {"train_s", "encode_s", "encode_ms_per_image", "query_ms", "cell_s", "date", "device"}


def csv_dicts(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stable(folder: Path, name: str = "results.csv") -> list[dict]:
    """``folder/name`` without its volatile columns, sorted (a Ray run writes cells as they complete)."""
    rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in csv_dicts(folder / name)]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def assert_same_run(folder: Path, reference: Path) -> None:
    """The same rows (metrics, config hashes, artifacts), CMC curves, attribute-query rows, recorded
    configurations and artifact arrays (codes of every split, per-query AP) as ``reference``."""
    assert stable(folder) == stable(reference)
    assert stable(folder, "cmc.csv") == stable(reference, "cmc.csv")
    assert stable(folder, "attribute_queries.csv") == stable(reference, "attribute_queries.csv")
    records = [(folder / "configs.jsonl").read_text().splitlines() for folder in (folder, reference)]
    assert sorted(records[0]) == sorted(records[1])
    for row in csv_dicts(reference / "results.csv"):
        with np.load(reference / row["artifact"]) as a, np.load(folder / row["artifact"]) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{row['artifact']}: {key}")
        if row["bits"]:
            assert (folder / row["artifact"].replace(".npz", ".method.pt")).is_file()


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """The grid through the local executor (the reference), with its cache warm for the Ray runs. It runs
    on one torch thread, as a Ray task of one CPU does: on some CPUs (seen on an AVX-512 AMD EPYC)
    torch's float reductions depend on the thread count, so DBH's codes at 2 threads differ from those at
    1 (mAP 7.976 against 7.998 here); a cell is reproducible at a given thread count, which every row's
    ``device`` records."""
    import torch

    tmp = tmp_path_factory.mktemp("ray")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tiny_run_config(tmp, **GRID, out=tmp / "local"))
    finally:
        torch.set_num_threads(threads)
    return tmp


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs on 127.0.0.1, for this module; :func:`hashbench.distributed.connect`
    uses it as it finds it."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",  # a new cluster, never one a stale /tmp/ray/ray_current_cluster names
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


def ray_config(local: Path, out: str, **kw):
    return tiny_run_config(local, **GRID, out=local / out, executor="ray", **kw)


def test_the_ray_executor_writes_what_the_local_one_does(cluster, local):
    rows = run(ray_config(local, "ray"))
    assert len(rows) == N_CELLS
    assert_same_run(local / "ray", local / "local")
    devices = {r["method"]: r["device"] for r in csv_dicts(local / "ray" / "results.csv")}
    assert devices["dbh"].startswith("cpu (1 threads")  # a task's 1 CPU, its torch threads
    assert run(ray_config(local, "ray")) == []  # finished: nothing submitted


def cell_workers() -> list[int]:
    """Pids of the Ray workers running a cell now (Ray names a worker after its task while it runs)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::hashbench-cell"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's workers through /proc")
def test_a_worker_killed_mid_cell_is_retried_and_the_grid_ends_complete(cluster, local):
    killed: list[int] = []
    stop = threading.Event()

    def kill_one() -> None:  # SIGKILL the first worker seen running a cell
        while not stop.is_set() and not killed:
            for pid in cell_workers():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        rows = run(ray_config(local, "killed"))
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was seen running a cell"
    assert len(rows) == N_CELLS
    keys = [(r["method"], r["bits"], r["config_hash"]) for r in csv_dicts(local / "killed" / "results.csv")]
    assert len(keys) == len(set(keys)) == N_CELLS  # complete, no duplicate row
    assert_same_run(local / "killed", local / "local")


def test_a_partly_finished_folder_resumes_through_ray(cluster, local):
    out = local / "resumed"
    run(
        tiny_run_config(local, **{**GRID, "methods": ["lsh"], "method_params": {}}, out=out)
    )  # lsh and the reference, locally
    rows = run(ray_config(local, "resumed"))
    assert sorted((r.method, r.bits) for r in rows) == [("dbh", 16), ("dbh", 32), ("itq", 16), ("itq", 32)]
    assert_same_run(out, local / "local")


def test_a_worker_without_the_cache_says_it_needs_a_shared_filesystem(local, tmp_path):
    pipe = Pipeline.setup(tiny_run_config(tmp_path, cache_dir=tmp_path / "elsewhere"))
    with pytest.raises(HashbenchError, match="elsewhere/trunk/.*shared filesystem"):
        require_cache(pipe, {"features"}, "node-2")
    require_cache(Pipeline.setup(tiny_run_config(local)), {"features", "maps"}, "node-1")  # filled: fine


def test_executor_options_fail_in_one_line(tmp_path, monkeypatch, capsys):
    for args, message in (
        (["--ray-address", "auto"], "--ray-address auto: needs --executor ray"),
        (["--executor", "ray", "--ray-cpus-per-cell", "0"], "--ray-cpus-per-cell 0.0: expected a positive"),
    ):
        assert main(["run", "--out", str(tmp_path / "res"), *args]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(HashbenchError, match=r"Ray is not installed here; pip install -e '.\[ray\]'"):
        run(tiny_run_config(tmp_path, executor="ray"))
    assert not (tmp_path / "res").exists()  # before any work
