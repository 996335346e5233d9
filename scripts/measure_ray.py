#!/usr/bin/env python
"""What ``--executor ray`` costs against ``--executor local`` on this machine, and what shipping the
feature cache as Ray objects would cost against reading it from the shared path (README, "Running the
grid on a Ray cluster").

    python scripts/measure_ray.py WORKDIR [--cpus 2] [-- extra `hashbench run` options]

Steps (the default grid: synthetic, LSH and ITQ at 128 ... 2048 bits, unless options say otherwise):

1. one cell (LSH at 128 bits) into ``WORKDIR/fill`` with ``--cache-dir WORKDIR/cache``: fills the
   cache (trunk maps, IDE stage), so that the runs compared below all start warm;
2. ``--executor local`` into ``WORKDIR/local`` (warm cache);
3. ``--executor ray`` into ``WORKDIR/ray``: hashbench starts (and stops) a local Ray cluster itself;
4. a cluster started apart (``ray start --head --block`` on 127.0.0.1 with ``--cpus`` CPUs, this
   script's child, ended by its pid), then ``--executor ray --ray-address`` into ``WORKDIR/ray-cluster``;
5. on that cluster: the cache's arrays (trunk maps and IDE features of every split) put into the object
   store by the driver and fetched by a task, against a task building the pipeline and reading the same
   arrays from the cache path (what a cell's task does);
6. the rows of 2-4 compared (metrics, codes' hashes: every column but times, date and device).

Prints a summary and writes ``WORKDIR/summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Ray >= 2.59 starts local clusters with token authentication (the token in ~/.ray/auth_token); a
# driver joining one started apart (`ray start`) must ask for it too
os.environ["RAY_AUTH_MODE"] = "token"  # read when ray is imported: before that (step 5 imports it)
ENV = dict(os.environ)
VOLATILE = {"train_s", "encode_s", "encode_ms_per_image", "query_ms", "cell_s", "date", "device"}


LOAD: dict[str, list[float]] = {}  # the 1-minute load average when each run began and ended


def hashbench(args: list[str]) -> float:
    """Run the CLI; returns its wall seconds (and notes the machine's load around it in LOAD)."""
    out = args[args.index("--out") + 1]
    LOAD[Path(out).name] = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hashbench.cli", *args], check=True, stdout=subprocess.DEVNULL, env=ENV
    )
    seconds = time.perf_counter() - t0
    LOAD[Path(out).name].append(os.getloadavg()[0])
    return seconds


def rows(folder: Path) -> list[dict]:
    with open(folder / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def stable(folder: Path) -> list[dict]:
    out = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows(folder)]
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


def cell_seconds(folder: Path) -> dict:
    """Per method: the cells' wall seconds (``cell_s``) summed, and per cell."""
    per: dict[str, list[float]] = {}
    for r in rows(folder):
        per.setdefault(r["method"], []).append(float(r["cell_s"]))
    return {
        m: {"cells": len(v), "sum_s": round(sum(v), 2), "per_cell_s": round(sum(v) / len(v), 2)}
        for m, v in per.items()
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def object_store_vs_path(address: str, run_args: list[str], cache: Path) -> dict:
    """Step 5 (see the module docstring), on the cluster at ``address``."""
    import numpy as np
    import ray

    from hashbench.cli import build_parser, run_config_of_args
    from hashbench.pipeline import Pipeline

    args = build_parser().parse_args(["run", "--cache-dir", str(cache), "--device", "cpu", *run_args])
    config = dataclasses.replace(run_config_of_args(args), progress=False)
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        t0 = time.perf_counter()
        pipe = Pipeline.setup(config).load({"maps", "features"})
        driver_read_s = time.perf_counter() - t0
        arrays = {
            f"{name}/{split}": np.ascontiguousarray(a)
            for name in ("maps", "features")
            for split, a in pipe.inputs[name].items()
        }
        nbytes = sum(a.nbytes for a in arrays.values())
        t0 = time.perf_counter()
        ref = ray.put(arrays)
        put_s = time.perf_counter() - t0

        @ray.remote(num_cpus=1, max_calls=1)  # a fresh worker: nothing of an earlier task kept
        def from_path(config) -> tuple[float, float, float, float]:
            t0 = time.perf_counter()
            p = Pipeline.setup(config)  # needed either way: splits, labels, backbone
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            p.load({"maps", "features"})  # memory-maps the trunk maps, checks every file's SHA-256
            read = time.perf_counter() - t0
            total = sum(
                float(np.asarray(a, dtype=np.float32).sum())
                for n in ("maps", "features")
                for a in p.inputs[n].values()
            )
            return setup, read, time.perf_counter() - t0, total

        @ray.remote(num_cpus=1, max_calls=1)  # a fresh worker: nothing of an earlier task kept
        def from_store(box) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            got = ray.get(box[0])
            fetched = time.perf_counter() - t0
            total = sum(float(np.asarray(a, dtype=np.float32).sum()) for a in got.values())
            return fetched, time.perf_counter() - t0, total

        setup_s, read_s, read_touch_s, path_total = ray.get(from_path.remote(config))
        get_s, get_touch_s, store_total = ray.get(from_store.remote([ref]))
        assert path_total == store_total
    finally:
        ray.shutdown()
    return {
        "cache_mb": round(nbytes / 2**20, 1),
        "driver_read_s": round(driver_read_s, 3),
        "put_s": round(put_s, 3),
        "task_get_s": round(get_s, 3),
        "task_get_and_sum_s": round(get_touch_s, 3),
        "task_setup_s": round(setup_s, 3),
        "task_read_s": round(read_s, 3),
        "task_read_and_sum_s": round(read_touch_s, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray clusters (default 2)")
    p.add_argument("run_args", nargs="*", help="extra `hashbench run` options (after --)")
    a = p.parse_args()
    w = a.workdir
    w.mkdir(parents=True, exist_ok=True)
    cache = w / "cache"
    base = ["run", "--no-progress", "--cache-dir", str(cache), *a.run_args]
    out: dict = {"cpus": a.cpus, "run_args": a.run_args, "nproc": os.cpu_count()}
    fill = ["--methods", "lsh", "--bits", "128", "--no-attribute-queries"]  # cheap once the cache is warm
    out["fill_cache_s"] = round(hashbench([*base, *fill, "--out", str(w / "fill")]), 1)
    out["local_s"] = round(hashbench([*base, "--out", str(w / "local")]), 1)
    env_cpus = ["--ray-cpus-per-cell", "1"]
    out["ray_own_cluster_s"] = round(
        hashbench([*base, "--executor", "ray", *env_cpus, "--out", str(w / "ray")]), 1
    )

    port = free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", str(a.cpus), "--num-gpus", "0", "--include-dashboard", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        for _ in range(120):  # until the head answers
            if (
                subprocess.run(
                    [str(Path(sys.executable).parent / "ray"), "status", "--address", address],
                    capture_output=True,
                    env=ENV,
                ).returncode
                == 0
            ):
                break
            time.sleep(1)
        out["cluster_start_s"] = round(time.perf_counter() - t0, 1)
        out["ray_running_cluster_s"] = round(
            hashbench(
                [*base, "--executor", "ray", "--ray-address", address, "--out", str(w / "ray-cluster")]
            ),
            1,
        )
        out["object_store"] = object_store_vs_path(address, a.run_args, cache)
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        head.wait(timeout=60)
    reference = stable(w / "local")
    out["rows_equal_local"] = {name: stable(w / name) == reference for name in ("ray", "ray-cluster")}
    out["cell_seconds"] = {name: cell_seconds(w / name) for name in ("local", "ray", "ray-cluster")}
    out["load_average_1min_before_after"] = LOAD
    (w / "summary.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
