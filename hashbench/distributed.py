"""The grid on many machines: ``hashbench run --executor ray``, one Ray task per (method, bits) cell.

Ray (Moritz et al., *Ray: A Distributed Framework for Emerging AI Applications*, OSDI 2018) schedules
the tasks; hashbench adds nothing of its own to it. The choices:

* **The driver is the only writer.** It fills the feature cache first (trunk maps, IDE stage: the same
  ``Pipeline.load`` as a local run), claims each pending cell (``cells/<hash>.lock``, as a local run
  does), submits its task and, when the result arrives, writes the cell exactly as the local executor
  does (:func:`hashbench.runner.run`'s commit: artifact, fitted method, ``configs.jsonl`` record,
  attribute-query rows, then the row, fsynced). A task *returns* its artifact and fitted method as
  bytes (:class:`hashbench.runner.CellOutcome`, a few MB for a Market-1501 cell) instead of writing
  them: the results folder needs no sharing, no lock ever spans machines, and a task killed half-way
  leaves nothing behind. A killed driver therefore resumes exactly like a killed local run: its claims
  die with it, the cells whose rows were written are skipped, the others are recomputed.
* **Rows are written as cells complete**, not in grid order: a finished cell is durable at once, so a
  killed driver loses only cells still in flight. ``results.csv`` may thus list the cells in another
  order than a local run (the report reads rows by key, never by position).
* **No duplicate row on a retry.** A task whose worker dies (``kill -9``, a node lost) is retried by
  Ray up to :data:`MAX_RETRIES` times (``max_retries``; exceptions raised by the cell itself are not
  retried: they would fail again). Each submitted cell yields one result and is committed once; the
  store's append refuses a key already there in any case.
* **Workers read the cache through a path they share**: the task gets the driver's
  :class:`~hashbench.pipeline.RunConfig` and rebuilds the pipeline from it (``--data-root``,
  ``--cache-dir``: the same paths on every node, i.e. a shared filesystem), checks that it arrives at
  the driver's config hash for the cell (else: other data or another hashbench on that node), and reads
  the cached inputs; a worker never fills the cache (a missing entry is an error naming the path). A
  worker process keeps its last pipeline, so the next cell of the run on it reads nothing again.
  Shipping the cache as Ray objects instead was measured (README, "Running the grid on a Ray
  cluster") and not taken: see there.
* **Resources**: each task declares ``--ray-cpus-per-cell`` CPUs (default 1) and runs torch with that
  many threads (Ray sets ``OMP_NUM_THREADS`` the same way), and one GPU when the run's device is CUDA.
* **Determinism**: the cell is seeded with the run's seed before its fit, as locally; the thread count
  is the one thing that differs from a local run (which uses all cores). The tests check that metrics,
  codes and hashes equal the local executor's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .errors import HashbenchError

if TYPE_CHECKING:
    from .pipeline import Pipeline, RunConfig
    from .runner import CellOutcome, Job

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
MAX_RETRIES = 3  # Ray's max_retries of a cell's task: attempts after a worker died
INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray>=2.40')"

# the pipeline this worker process built last (its RunConfig's repr -> Pipeline): a worker computing
# several cells of one run builds it and reads the cache once
_WORKER_PIPELINE: dict[str, Pipeline] = {}


def check_executor(config: RunConfig) -> None:
    """The executor options, checked before any heavy work (one line naming the option)."""
    if config.executor not in EXECUTORS:
        raise HashbenchError(f"--executor {config.executor}: expected one of {', '.join(EXECUTORS)}")
    if config.executor != "ray":
        if config.ray_address:
            raise HashbenchError(f"--ray-address {config.ray_address}: needs --executor ray")
        return
    if not config.ray_cpus_per_cell > 0:
        raise HashbenchError(f"--ray-cpus-per-cell {config.ray_cpus_per_cell}: expected a positive number")
    require_ray()


def require_ray():
    try:
        import ray
    except ImportError:
        raise HashbenchError(f"--executor ray: Ray is not installed here; {INSTALL_HINT}") from None
    return ray


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://...``; ``None``:
    ``$RAY_ADDRESS``, else a new local cluster on this machine, never one found by chance, e.g. a stale
    ``/tmp/ray/ray_current_cluster``); returns whether this call connected (and so should disconnect).
    A process already connected (a test's fixture, a notebook) is left as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "--executor ray (a local cluster)" if address == "local" else f"--ray-address {address}"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ""
        if address != "local" and "RAY_AUTH_MODE" not in os.environ:
            hint = " (a cluster with token authentication: set RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN as on its nodes)"
        raise HashbenchError(f"{where}: cannot connect to Ray: {first}{hint}") from None
    return True


def threads_of(cpus: float) -> int:
    """The torch threads of a task declaring ``cpus`` CPUs."""
    return max(1, int(cpus))


def ray_cells(config: RunConfig, pipe: Pipeline, jobs: Sequence[Job]) -> Iterator[tuple[Job, CellOutcome]]:
    """Compute ``jobs`` as Ray tasks; yields (job, outcome) as each completes. The caller writes them.

    A cell that fails (its own error, or its worker dying more than :data:`MAX_RETRIES` times) stops the
    run with one line naming it; the other tasks are cancelled, and the cells committed so far stay."""
    if not jobs:
        return
    ray = require_ray()
    from ray.exceptions import RayError, RayTaskError

    started = connect(config.ray_address)
    try:
        gpus = 1 if pipe.device.type == "cuda" else 0
        task = ray.remote(cell_task).options(
            num_cpus=config.ray_cpus_per_cell,
            num_gpus=gpus,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
            name="hashbench-cell",
        )
        # the driver's resolved engine: a worker must not resolve "auto" on its own (other keys)
        worker_config = dataclasses.replace(config, progress=False, engine=pipe.engine)
        threads = threads_of(config.ray_cpus_per_cell)
        refs = {
            task.remote(worker_config, job.name, job.bits, job.chash, job.tag, threads): job for job in jobs
        }
        resources = ray.cluster_resources()
        log.info(
            "%d cell(s) submitted to Ray (%.0f CPU(s), %d GPU(s) in the cluster; %g CPU(s)%s per cell)",
            len(refs),
            resources.get("CPU", 0),
            int(resources.get("GPU", 0)),
            config.ray_cpus_per_cell,
            " and 1 GPU" if gpus else "",
        )
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                job = refs[ready[0]]
                try:
                    outcome = ray.get(ready[0])
                except RayTaskError as exc:  # the cell's own error, raised on the worker
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    if isinstance(cause, HashbenchError):
                        raise HashbenchError(f"{job.tag}: {cause}") from None
                    first = str(cause).splitlines()[0] if str(cause) else ""
                    raise HashbenchError(
                        f"{job.tag}: failed on a Ray worker: {type(cause).__name__}: {first}"
                    ) from exc
                except RayError as exc:  # its worker died on every attempt, a node was lost, ...
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    raise HashbenchError(
                        f"{job.tag}: its Ray task was lost after {MAX_RETRIES} retries: "
                        f"{type(exc).__name__}: {first}"
                    ) from None
                yield job, outcome
        finally:
            for ref in waiting:  # a failure or an interrupt: the cells in flight are abandoned
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()


def cell_task(config: RunConfig, name: str, bits: int, chash: str, tag: str, threads: int) -> CellOutcome:
    """One cell, on a Ray worker: the run's pipeline rebuilt from ``config`` (or this worker's last one),
    checked against the driver's config hash, its cached inputs read from the shared cache, then
    :func:`hashbench.runner.compute_cell`. Nothing is written."""
    import torch

    from .keys import digest_of
    from .pipeline import Pipeline
    from .runner import compute_cell

    if not logging.getLogger().handlers:  # the worker's lines reach the driver's console through Ray
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    host = socket.gethostname()
    key = repr(config)
    pipe = _WORKER_PIPELINE.get(key)
    if pipe is None:
        _WORKER_PIPELINE.clear()
        pipe = Pipeline.setup(config)
        _WORKER_PIPELINE[key] = pipe
    method = pipe.method(name, bits)
    here = digest_of(pipe.cell_config(method))
    if here != chash:
        raise HashbenchError(
            f"on Ray node {host} the cell's configuration hash is {here}, the driver's {chash}: that node "
            "sees other data under --data-root, or has another hashbench or plugin installed"
        )
    require_cache(pipe, method.consumes, host)
    pipe.load(method.consumes)
    log.info("%s: on Ray node %s (pid %d, %d torch thread(s))", tag, host, os.getpid(), threads)
    return compute_cell(pipe, config, name, bits, method, tag)


def require_cache(pipe: Pipeline, consumes, host: str) -> None:
    """The cache entries a cell reads must exist on the worker (the driver filled them): a worker never
    extracts trunk maps or trains the IDE stage itself. One line naming the missing path else."""
    from .cache import MANIFEST
    from .features import FeatureCache
    from .ide import ide_dir
    from .method import NEEDS_IDE, NEEDS_MAPS

    need = []
    if NEEDS_MAPS & set(consumes):
        need.append(FeatureCache(pipe.cache_root).trunk_dir(pipe.keys.trunk) / MANIFEST)
    if NEEDS_IDE & set(consumes):
        need.append(ide_dir(pipe.cache_root, pipe.keys.ide) / MANIFEST)
    for path in need:
        if not path.is_file():
            raise HashbenchError(
                f"on Ray node {host} the feature cache entry {path.parent} is missing: --cache-dir must be "
                "a folder every node of the cluster reaches at the same path (a shared filesystem)"
            )
