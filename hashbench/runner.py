"""The runner: the grid of methods × code lengths over one :class:`~hashbench.pipeline.Pipeline`.

For each (method, bits) cell: fit on the training view, encode, Hamming-rank, score -> artifact, the
cell's recorded configuration (``configs.jsonl``) and its CSV row. Each cell is a pure function of its
configuration and seed; finished cells (same config hash) are skipped, so a killed run resumes at the
cell it was in. The runner never knows a method's internals: the pipeline hands the method a
:class:`~hashbench.method.View` with exactly the inputs the method declares.

A cell is computed (:func:`compute_cell`: nothing written, a :class:`CellOutcome` returned) in this
process (``executor="local"``, one cell after another) or as a Ray task (``executor="ray"``,
:mod:`hashbench.distributed`); either way this process alone commits it (artifact, fitted method,
configuration record, attribute-query rows, then the row), so resuming works the same for both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import __version__, metrics, search
from .checks import check_bits, check_writable_dir
from .configs import read_configs, record_config
from .distributed import check_executor
from .durable import claim
from .errors import HashbenchError
from .features import resolve_device
from .keys import digest_of, resolve_cache_dir
from .method import HashMethod, check_codes
from .pipeline import (
    REFERENCE,
    Pipeline,
    RunConfig,
    check_method_params,
    make_method,
    seed_everything,
)
from .registry import Registry
from .results import ResultRow, ResultStore, device_name, git_commit, now

log = logging.getLogger(__name__)

__all__ = ["REFERENCE", "CellOutcome", "RunConfig", "compute_cell", "make_method", "run", "wall_summary"]


def schema_json(schema) -> str:
    """An attribute schema as JSON (a list of groups: name, values, fields, description), for artifacts."""
    return json.dumps(
        [
            {"name": g.name, "values": list(g.values), "fields": list(g.fields), "description": g.description}
            for g in schema.groups
        ]
    )


def cell_arrays(pipe: Pipeline, train_codes: np.ndarray | None) -> dict[str, np.ndarray]:
    """What a cell artifact holds beside its evaluation, so that explain/query need only the results dir:
    packed training codes, pids and cameras of every split, their identity attributes (int16, -1
    unknown) and the attribute schema (JSON)."""
    out: dict[str, np.ndarray] = {}
    if train_codes is not None:
        out["train_codes"] = search.pack_codes(train_codes)
    for split in ("train", "query", "gallery"):
        arrays = pipe.splits.arrays[split]
        out[f"{split}_pids"], out[f"{split}_camids"] = arrays.pids, arrays.camids
        if pipe.attributes is not None:
            out[f"{split}_attributes"] = pipe.attributes.lookup(arrays.pids).astype(np.int16)
    if pipe.attributes is not None:
        out["schema"] = np.array(schema_json(pipe.attributes.schema))
    return out


def class_path(method: HashMethod) -> str:
    return f"{type(method).__module__}:{type(method).__qualname__}"


def attribute_query_rows(
    pipe: Pipeline,
    name: str,
    method: HashMethod,
    codes: dict[str, np.ndarray],
    bits: int,
    seed: int,
    tag: str,
) -> tuple[list[dict], list[dict]]:
    """Search by description (:mod:`hashbench.describe`): each decoder (``--decoders``, then the method's
    own) fitted on the training codes and attributes, evaluated on the gallery (and photo + description
    on the queries). The rows of ``attribute_queries.csv`` and ``photo_description.csv`` without their
    provenance (the cell's commit adds config hash, commit and date:
    :meth:`ResultStore.save_attribute_queries`, :meth:`ResultStore.save_photo_description`)."""
    from .decoders import make_decoders
    from .describe import CellCodes, describe_cell

    table = pipe.attributes
    decoders = make_decoders(pipe.config.decoders, table.schema, pipe.registry, pipe.config.decoder_params)
    own = method.decoder(table.schema)
    if own is not None:
        decoders.append(own)
    arrays = pipe.splits.arrays
    cell = CellCodes(
        train_codes=codes["train"],
        train_attributes=table.lookup(arrays["train"].pids),
        query_codes=codes["query"],
        query_pids=arrays["query"].pids,
        query_camids=arrays["query"].camids,
        gallery_codes=codes["gallery"],
        gallery_pids=arrays["gallery"].pids,
        gallery_camids=arrays["gallery"].camids,
        table=table,
    )
    key = {"dataset": pipe.name, "method": name, "bits": bits}
    choice = pipe.config.alpha_choice
    alphas_of = None
    if choice is not None:  # 0 (the photo alone) and the alphas chosen on held-out identities for the cell

        def alphas_of(decoder: str) -> list[float]:
            return sorted(
                {0.0} | {a for (m, b, d, _), a in choice.items() if (m, b, d) == (name, bits, decoder)}
            )

    return describe_cell(decoders, cell, key, {"seed": seed}, pipe.config.photo_description, tag, alphas_of)


def with_alpha_choice(config: RunConfig) -> RunConfig:
    """``config`` with the validation choice of alpha read in, for ``photo_description_alphas="validation"``
    (``--photo-description-alphas``): photo + description is then scored at alpha 0 and at the alphas
    ``hashbench pick-alpha`` recorded in ``<out>/validation/photo_description_alpha.csv`` only (at most 5 of
    the 13 settings per decoder where a choice exists, the photo alone where none does), which the report shows;
    ``"all"`` scores every alpha. One-line errors for another mode, a ``--holdout`` run (alpha is chosen on
    those rows) and a missing file."""
    mode = config.photo_description_alphas
    if mode == "all":
        return config
    option = "--photo-description-alphas"
    if mode != "validation":
        raise HashbenchError(f"{option} {mode!r}: expected all or validation")
    if config.holdout:
        raise HashbenchError(f"{option} validation: a --holdout run is where alpha is chosen; use all")
    from .report.photo_description import ALPHA_NAME, read_alpha_choice

    path = config.results_dir() / "validation" / ALPHA_NAME
    if not path.is_file():
        raise HashbenchError(
            f"{option} validation: no {path} (run `hashbench pick-alpha` on a --holdout run first)"
        )
    choice = read_alpha_choice(path)
    log.info("photo + description at alpha 0 and the %d choices of %s", len(choice), path)
    return dataclasses.replace(config, alpha_choice=choice)


def run_oracle(pipe: Pipeline, store: ResultStore, commit: str) -> None:
    """The oracle rows of the folder (:func:`hashbench.describe.write_oracle`), unless stored already."""
    from .describe import has_oracle, oracle_hash, write_oracle

    gallery = pipe.splits.arrays["gallery"].pids
    chash = oracle_hash(
        pipe.base_config["dataset"], pipe.base_config["dataset_digest"], gallery, pipe.config.seed
    )
    if has_oracle(store, pipe.name, chash):
        return
    schema = pipe.attributes.schema
    write_oracle(store, pipe.name, schema, gallery, pipe.attributes, chash, commit, pipe.config.seed)


@dataclass
class CellOutcome:
    """A computed (method, bits) cell before anything of it is written: what its commit (the artifact,
    the fitted method, its configuration record, its attribute-query rows, then its row, in that order)
    needs. Plain data and bytes, so that a Ray task can return it to the driver
    (:mod:`hashbench.distributed`), the one writer of the results folder."""

    evaluation: metrics.Evaluation
    train_s: float
    encode_s: float
    query_ms: float
    compute_s: float  # wall seconds of fit, encoding, evaluation, attribute queries, serialising
    artifact: bytes  # the cell's .npz (:meth:`ResultStore.artifact_bytes`)
    method_state: bytes | None  # the fitted method's file, or None when its state cannot be saved
    consumes: frozenset
    layout: dict | None
    attribute_rows: list[dict] | None  # None: not evaluated
    photo_rows: list[dict] | None  # photo + description rows (None: not evaluated)
    device: str  # the device column: where the cell was computed


def compute_cell(
    pipe: Pipeline, config: RunConfig, name: str, bits: int, method: HashMethod, tag: str
) -> CellOutcome:
    """Fit, encode, evaluate one cell on ``pipe`` (its inputs loaded), seeded with the run's seed before
    the fit, so that a cell is a pure function of its configuration whichever process computes it."""
    consumes = method.consumes  # may depend on the method's hyperparameters (finetune)
    log.info("%s: training", tag)
    seed_everything(config.seed)
    t_cell = time.perf_counter()
    q, g = pipe.splits.arrays["query"], pipe.splits.arrays["gallery"]
    context = pipe.context(consumes)
    t0 = time.perf_counter()
    method.fit(pipe.view("train", consumes), context)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_codes = check_codes(method.encode(pipe.view("query", consumes)), len(q.pids), bits, name)
    g_codes = check_codes(method.encode(pipe.view("gallery", consumes)), len(g.pids), bits, name)
    encode_s = time.perf_counter() - t0
    ev, query_ms = pipe.evaluate(q_codes, g_codes)
    t_codes = None
    if pipe.attributes is not None:  # the attribute decoder (and explain, query) learn from these
        t0 = time.perf_counter()
        n_train = len(pipe.splits.arrays["train"].pids)
        t_codes = check_codes(method.encode(pipe.view("train", consumes)), n_train, bits, name)
        log.info("%s: training split encoded in %.1f s (not in encode_s)", tag, time.perf_counter() - t0)
    artifact = ResultStore.artifact_bytes(
        ap=ev.ap,
        cmc=ev.cmc,
        query_codes=search.pack_codes(q_codes),
        gallery_codes=search.pack_codes(g_codes),
        **cell_arrays(pipe, t_codes),
    )
    state = ResultStore.method_bytes(method, f"{tag}: ")
    layout = method.code_layout(context.schema)
    if layout is not None:
        check_layout(layout, bits, name)
    aq = pd = None
    if config.attribute_queries and t_codes is not None:
        codes = {"train": t_codes, "query": q_codes, "gallery": g_codes}
        aq, pd = attribute_query_rows(pipe, name, method, codes, bits, config.seed, tag)
    return CellOutcome(
        evaluation=ev,
        train_s=train_s,
        encode_s=encode_s,
        query_ms=query_ms,
        compute_s=time.perf_counter() - t_cell,
        artifact=artifact,
        method_state=state,
        consumes=frozenset(consumes),
        layout=layout,
        attribute_rows=aq,
        photo_rows=pd,
        device=device_name(str(pipe.device)),
    )


@dataclass
class Job:
    """One cell of the grid as the driver knows it."""

    name: str
    bits: int
    method: HashMethod
    config: dict
    chash: str
    done: bool
    tag: str = ""


def run(
    config: RunConfig, registry: Registry | None = None, on_row: Callable[[ResultRow], None] | None = None
) -> list[ResultRow]:
    """Run the grid; returns the rows computed by this call (cells finished earlier are skipped).

    Rows go to ``config.results_dir()``: ``--out``, else ``results/<dataset>``, and for a validation run
    (``holdout``) ``results/<dataset>/validation``.
    """
    t_run = time.perf_counter()
    registry = registry or Registry.load()
    methods = list(config.methods)
    for name in methods:
        registry.method(name)  # unknown name: error before any work
    check_method_params(methods, registry, config.method_params)
    if config.attribute_queries:  # an unknown decoder or hyperparameter: an error before any work
        from .data import AttributeGroup, AttributeSchema
        from .decoders import make_decoders

        probe = AttributeSchema((AttributeGroup("probe", ("a", "b"), ("probe",)),))
        make_decoders(config.decoders, probe, registry, config.decoder_params)
    resolve_device(config.device)  # a bad --device fails before any data is read
    check_bits(config.bits)
    check_writable_dir(config.results_dir(), "--out")
    check_writable_dir(resolve_cache_dir(config.cache_dir), "--cache-dir")
    check_executor(config)  # --executor ray without Ray: one line before any work
    config = with_alpha_choice(config)
    store = ResultStore(config.results_dir())
    store.sweep()  # temp files of a run killed mid-write
    seed_everything(config.seed)
    commit = git_commit()  # the code that runs is the code at start
    pipe = Pipeline.setup(config, registry)
    recorded = read_configs(store.out)

    def remember(cfg: dict, method: HashMethod | None, consumes, layout) -> str:
        """Record a cell's configuration (once per hash), before its row; returns its hash."""
        chash = digest_of(cfg)
        if chash not in recorded:
            record = pipe.record(cfg, consumes, layout, class_path(method) if method is not None else "")
            record_config(store.out, record)
            recorded[chash] = record
        return chash

    # the grid and its config hashes, known before any heavy work: a finished grid costs nothing
    ref_config = pipe.reference_config()
    ref_hash = digest_of(ref_config)
    ref_done = store.finished(pipe.name, REFERENCE, None, ref_hash) is not None
    do_reference = config.reference and not ref_done
    grid: list[Job] = []
    for name, bits in ((m, b) for m in methods for b in config.bits):
        method = pipe.method(name, bits)
        cfg = pipe.cell_config(method)
        chash = digest_of(cfg)
        done = store.finished(pipe.name, name, bits, chash) is not None
        if done and chash not in recorded:  # finished by a run that did not record configurations
            schema = pipe.attributes.schema if pipe.attributes is not None else None
            remember(cfg, method, method.consumes, method.code_layout(schema))
        grid.append(Job(name, bits, method, cfg, chash, done))
    for k, job in enumerate(grid, 1):
        job.tag = f"cell {k}/{len(grid)} {job.name} @ {job.bits} bits"
    if ref_done and ref_hash not in recorded:
        remember(ref_config, None, {"features"}, None)
    if config.attribute_queries and pipe.attributes is not None:  # the ceiling: true attributes
        run_oracle(pipe, store, commit)
    pending = [job for job in grid if not job.done]
    if config.reference and not do_reference:
        log.info("%s: finished earlier, skipped", REFERENCE)
    if not pending and not do_reference:
        log.info("all %d cells finished earlier (%s); nothing to do", len(grid), store.csv)
        return []
    need = set().union(*(job.method.consumes for job in pending)) | ({"features"} if do_reference else set())
    pipe.load(need)  # the driver fills the cache; Ray workers only read it
    dev = device_name(str(pipe.device))
    counts = {s: len(pipe.splits.records[s]) for s in ("train", "query", "gallery")}
    rows: list[ResultRow] = []

    def emit(
        method: str,
        bits: int | None,
        ev,
        train_s,
        encode_s,
        query_ms,
        nbytes,
        chash,
        artifact,
        cell_s,
        device,
    ) -> None:
        m = ev.to_dict()
        row = ResultRow(
            dataset=pipe.name,
            method=method,
            bits=bits,
            map=m["map"],
            rank1=m["rank1"],
            rank5=m["rank5"],
            rank10=m["rank10"],
            rank20=m["rank20"],
            train_s=train_s,
            encode_s=encode_s,
            encode_ms_per_image=1000 * encode_s / (counts["query"] + counts["gallery"]),
            query_ms=query_ms,
            cell_s=cell_s,
            bytes_per_code=nbytes,
            n_train=counts["train"],
            n_query=counts["query"],
            n_gallery=counts["gallery"],
            backbone=f"{pipe.backbone.name}/{pipe.cut}",
            input_size="x".join(map(str, pipe.input_size)),
            seed=config.seed,
            device=device,
            version=__version__,
            commit=commit,
            config_hash=chash,
            date=now(),
            artifact=artifact,
        )
        store.append(row, ev.cmc)
        rows.append(row)
        if on_row:
            on_row(row)

    def compute_reference() -> None:
        fq, fg = pipe.inputs["features"]["query"], pipe.inputs["features"]["gallery"]
        t_cell = t0 = time.perf_counter()
        ranking = search.float_rank(fq, fg, metric="cosine")
        query_ms = (time.perf_counter() - t0) * 1000 / len(fq)
        ev = pipe.score(ranking)
        art = store.save_artifact(store.artifact_path(REFERENCE, None, ref_hash), ap=ev.ap, cmc=ev.cmc)
        remember(ref_config, None, {"features"}, None)
        emit(
            REFERENCE,
            None,
            ev,
            pipe.timings.get("ide_train_s", 0.0),
            pipe.timings.get("ide_embed_s", 0.0),
            query_ms,
            fq.shape[1] * 4,
            ref_hash,
            art,
            time.perf_counter() - t_cell,
            dev,
        )
        log.info("%s: mAP %.2f, rank-1 %.2f", REFERENCE, ev.to_dict()["map"], ev.to_dict()["rank1"])

    def claimed(tag: str, method: str, bits: int | None, chash: str, compute: Callable[[], None]) -> None:
        """Compute a cell unless another run into this folder holds it, or finished it meanwhile."""
        with claim(store.out, chash) as mine:
            if not mine:
                log.info("%s: being computed by another run, skipped", tag)
            elif store.finished(pipe.name, method, bits, chash) is not None:
                log.info("%s: finished by another run, skipped", tag)
            else:
                compute()

    if do_reference:
        claimed(REFERENCE, REFERENCE, None, ref_hash, compute_reference)

    def commit_cell(job: Job, out: CellOutcome) -> None:
        """Write a computed cell: artifact, fitted method, configuration record, attribute-query rows,
        then its row (the commit mark). Only the driver calls this, whichever executor computed it."""
        t0 = time.perf_counter()
        path = store.artifact_path(job.name, job.bits, job.chash)
        art = store.save_artifact_bytes(path, out.artifact)
        if out.method_state is not None:
            store.save_method_bytes(path, out.method_state)
        remember(job.config, job.method, out.consumes, out.layout)
        if out.attribute_rows is not None:
            key = {"dataset": pipe.name, "method": job.name, "bits": job.bits}
            prov = {"config_hash": job.chash, "commit": commit, "seed": config.seed, "date": now()}
            store.save_attribute_queries([{**r, **key, **prov} for r in out.attribute_rows])
        if out.photo_rows:
            store.save_photo_description([{**r, **key, **prov} for r in out.photo_rows])
        ev = out.evaluation
        nbytes = search.bytes_per_code(job.bits)
        cell_s = out.compute_s + time.perf_counter() - t0
        emit(
            job.name,
            job.bits,
            ev,
            out.train_s,
            out.encode_s,
            out.query_ms,
            nbytes,
            job.chash,
            art,
            cell_s,
            out.device,
        )
        d = ev.to_dict()
        log.info("%s: mAP %.2f, rank-1 %.2f (train %.1f s)", job.tag, d["map"], d["rank1"], out.train_s)

    for job in grid:
        if job.done:
            log.info("%s: finished earlier, skipped", job.tag)
    todo = [job for job in grid if not job.done]
    if config.executor == "ray":
        from .distributed import ray_cells

        with contextlib.ExitStack() as held:  # the claims of the cells in flight
            claims: dict[str, contextlib.ExitStack] = {}
            submit = []
            for job in todo:
                one = held.enter_context(contextlib.ExitStack())
                if not one.enter_context(claim(store.out, job.chash)):
                    log.info("%s: being computed by another run, skipped", job.tag)
                elif store.finished(pipe.name, job.name, job.bits, job.chash) is not None:
                    log.info("%s: finished by another run, skipped", job.tag)
                else:
                    claims[job.chash] = one
                    submit.append(job)
                    continue
                one.close()
            for job, outcome in ray_cells(config, pipe, submit):  # as they complete
                commit_cell(job, outcome)
                claims.pop(job.chash).close()
    else:
        for job in todo:
            claimed(
                job.tag,
                job.name,
                job.bits,
                job.chash,
                lambda job=job: commit_cell(
                    job, compute_cell(pipe, config, job.name, job.bits, job.method, job.tag)
                ),
            )
    log.info("%s", wall_summary(rows, time.perf_counter() - t_run))
    return rows


def check_layout(layout: dict, bits: int, who: str) -> None:
    """A method's code layout: named, non-empty ranges inside the code, not overlapping."""
    spans = sorted((int(a), int(b), str(k)) for k, (a, b) in layout.items())
    for (a, b, k), nxt in zip(spans, [*spans[1:], None], strict=True):
        if not 0 <= a < b <= bits or (nxt is not None and nxt[0] < b):
            raise HashbenchError(
                f"method {who!r}: code_layout range {k} = ({a}, {b}) is not inside {bits} bits, or overlaps"
            )


def wall_summary(rows: Sequence[ResultRow], total_s: float) -> str:
    """Where a run's wall time went: its cells' wall seconds per method, and the rest (setup, reading or
    computing the features, the IDE stage)."""
    per: dict[str, list[float]] = {}
    for r in rows:
        per.setdefault(r.method, []).append(r.cell_s)
    cells = sum(sum(v) for v in per.values())
    parts = ", ".join(f"{m} {sum(v) / 60:.1f} min ({len(v)})" for m, v in per.items())
    return (
        f"wall time {total_s / 60:.1f} min: {len(rows)} cells {cells / 60:.1f} min [{parts}], "
        f"setup and features {(total_s - cells) / 60:.1f} min"
    )
