"""The runner: methods × code lengths on one dataset, one results row per cell.

Pipeline (DESIGN.md): dataset -> frozen trunk maps (cached) -> adapted IDE features (cached) ->
for each (method, bits): fit, encode, pack, Hamming-rank, score -> artifact + CSV row. Each cell is a
pure function of its configuration and seed; finished cells (same config hash) are skipped, so a
killed run resumes at the cell it was in. The runner never knows a method's internals: it hands the
method a :class:`~hashbench.method.View` with exactly the inputs the method declares.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, metrics, search
from .data import Dataset, Splits, holdout_splits
from .errors import HashbenchError
from .features import FeatureCache, ImageSource, default_cache_dir, digest_of, resolve_device
from .ide import IDEConfig, adapted_features
from .method import INPUTS, Context, HashMethod, View, check_codes
from .registry import Registry
from .results import ResultRow, ResultStore, device_name, git_commit, now

log = logging.getLogger(__name__)

REFERENCE = "ide-float"


@dataclass
class RunConfig:
    """Everything a run depends on; the per-cell config hash is derived from it."""

    dataset: str = "synthetic"
    data_root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    methods: Sequence[str] = ("lsh", "itq")
    bits: Sequence[int] = (128, 256, 512, 1024, 2048)
    backbone: str = "mobilenetv2"
    weights: str = "imagenet"
    cut: str | None = None
    input_size: tuple[int, int] | None = None
    ide: IDEConfig = field(default_factory=IDEConfig)
    method_params: dict[str, dict] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    out: Path | None = None
    cache_dir: Path | None = None
    search_backend: str = "auto"
    reference: bool = True
    progress: bool = True
    finetune: str = "top"  # deep methods: "top" (cached trunk maps) or "full" (whole backbone from pixels)
    holdout: int = 0  # > 0: validation run; that many training ids become query/gallery, test split unused
    attribute_queries: bool = True  # search by description per cell (datasets with attributes)


@dataclass
class Prepared:
    """What the grid shares: dataset, label arrays, attributes and the cached inputs of each split."""

    dataset: Dataset
    splits: Splits
    attributes: object
    inputs: dict[str, dict[str, np.ndarray]]  # input name -> split -> array
    backbone: object
    cut: str
    input_size: tuple[int, int]
    device: torch.device
    base_config: dict
    timings: dict
    name: str = ""  # the dataset column of the rows (``<dataset>-holdout<N>`` for a validation run)
    source_records: dict | None = None  # the records the trunk cache is computed on (the dataset's)
    source_index: dict | None = None  # validation run: split -> rows of the dataset's training split


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare(config: RunConfig, registry: Registry, need: set[str]) -> Prepared:
    """Everything the cells share: :func:`setup` then :func:`load_inputs`."""
    prep = setup(config, registry)
    load_inputs(prep, config, need | ({"features"} if config.reference else set()))
    return prep


def setup(config: RunConfig, registry: Registry) -> Prepared:
    """The cheap part: dataset records and attributes, backbone and weights, the base config (no features)."""
    dataset_cls = registry.dataset(config.dataset)
    backbone_cls = registry.backbone(config.backbone)
    dataset: Dataset = dataset_cls(config.data_root, **config.dataset_options)
    splits = Splits(dataset.splits())
    source_records, source_index, name = splits.records, None, dataset.name
    if config.holdout:  # validation: query/gallery from held-out training ids; the test split is never read
        splits, source_index = holdout_splits(splits.records["train"], config.holdout, config.seed)
        source_records = {"train": source_records["train"]}
        name = f"{dataset.name}-holdout{config.holdout}"
    attributes = dataset.attributes()
    device = resolve_device(config.device)
    cache = FeatureCache(config.cache_dir or default_cache_dir())
    input_size = tuple(config.input_size or dataset.default_input_size)
    backbone = backbone_cls(config.weights).load_weights(cache.root)
    cut = config.cut or backbone.default_cut
    backbone.check_cut(cut)
    log.info("dataset %s: %s", dataset.name, ", ".join(f"{k} {len(v)}" for k, v in splits.records.items()))
    base = {
        "dataset": dataset.config(),
        "dataset_digest": dataset.digest(),
        "backbone": backbone.config(),
        "cut": cut,
        "input_size": list(input_size),
        "ide": asdict(config.ide),
        "seed": config.seed,
    }
    if config.holdout:
        base["holdout"] = {"ids": config.holdout, "seed": config.seed}
    return Prepared(
        dataset,
        splits,
        attributes,
        {},
        backbone,
        cut,
        input_size,
        device,
        base,
        {},
        name,
        source_records,
        source_index,
    )


def load_inputs(prep: Prepared, config: RunConfig, need: set[str]) -> None:
    """The heavy part: trunk maps (cached), adapted features if ``need`` has them, attributes."""
    dataset, splits, backbone, cut, device = prep.dataset, prep.splits, prep.backbone, prep.cut, prep.device
    cache = FeatureCache(config.cache_dir or default_cache_dir())
    source = prep.source_records or splits.records
    maps, info = cache.trunk_maps(
        dataset, source, backbone, cut, prep.input_size, device, progress=config.progress
    )
    timings = {"extract_s": info["extract_s_recorded"]}
    n_images = sum(len(v) for v in source.values())
    if info["extract_s"]:
        log.info(
            "trunk maps of %d images extracted in %.0f s (%.1f images/s)",
            n_images,
            info["extract_s"],
            n_images / info["extract_s"],
        )
    else:
        took = info["extract_s_recorded"]
        log.info(
            "trunk maps of %d images read from the cache %s%s",
            n_images,
            info["cache_dir"],
            f" (extraction took {took:.0f} s, {n_images / took:.1f} images/s)" if took else "",
        )
    inputs = prep.inputs
    ide_key = info["key"]
    if prep.source_index is not None:  # validation splits are rows of the training split's maps
        maps = {s: np.ascontiguousarray(maps["train"][rows]) for s, rows in prep.source_index.items()}
        ide_key = digest_of({"trunk": info["key"], "holdout": prep.base_config["holdout"]})
    inputs["maps"] = maps
    if "features" in need:
        feats, ide_info = adapted_features(
            cache.root,
            ide_key,
            maps,
            splits.arrays["train"].pids,
            backbone,
            cut,
            config.ide,
            device,
            progress=config.progress,
        )
        inputs["features"] = feats
        timings.update({k: v for k, v in ide_info.items() if k.endswith("_s")})
        timings["ide_history"] = ide_info.get("ide_history")
        log.info(
            "IDE stage: %d epochs, trained in %.0f s, features embedded in %.0f s",
            config.ide.epochs,
            ide_info["ide_train_s"],
            ide_info["ide_embed_s"],
        )
    if "images" in need:
        inputs["images"] = {
            s: ImageSource(dataset, splits.records[s], prep.input_size) for s in splits.records
        }
    if "attributes" in need:
        if prep.attributes is None:
            raise HashbenchError(f"dataset {dataset.name!r} has no attribute table, needed by a method")
        inputs["attributes"] = {s: prep.attributes.lookup(splits.arrays[s].pids) for s in splits.records}
    prep.timings.update(timings)


def make_view(prep: Prepared, split: str, consumes: frozenset[str]) -> View:
    arrays = prep.splits.arrays[split]
    extra = {name: prep.inputs[name][split] for name in consumes}
    return View(split, arrays.pids, arrays.camids, **extra)


def make_method(klass: type[HashMethod], bits: int, config: RunConfig) -> HashMethod:
    """Instantiate a method for a cell; the run-level ``finetune`` goes to methods that accept it."""
    params = dict(config.method_params.get(klass.name, {}))
    if "finetune" in inspect.signature(klass.__init__).parameters:
        params.setdefault("finetune", config.finetune)
    return klass(bits=bits, seed=config.seed, **params)


def parse_method_params(methods: Sequence[str], registry: Registry, params: dict[str, dict]) -> None:
    """Fail early on unknown methods or hyperparameters (before any heavy work)."""
    for name in methods:
        klass = registry.method(name)
        bad = [k for k in params.get(name, {}) if k not in inspect.signature(klass.__init__).parameters]
        if bad:
            valid = [
                p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "bits", "seed")
            ]
            raise HashbenchError(
                f"--param {name}.{bad[0]}: unknown hyperparameter; valid: {', '.join(valid)}"
            )
    for name in params:
        if name not in methods:
            raise HashbenchError(f"--param {name}.*: method {name!r} is not in --methods")


def evaluate_codes(prep: Prepared, q_codes: np.ndarray, g_codes: np.ndarray, backend: str):
    """Rank the gallery by Hamming distance and score; returns (evaluation, query ms per query)."""
    qp, gp = search.pack_codes(q_codes), search.pack_codes(g_codes)
    t0 = time.perf_counter()
    ranking = search.hamming_rank(qp, gp, backend=backend)
    query_ms = (time.perf_counter() - t0) * 1000 / len(qp)
    q, g = prep.splits.arrays["query"], prep.splits.arrays["gallery"]
    return metrics.evaluate_rankings(ranking, q.pids, q.camids, g.pids, g.camids), query_ms


def schema_json(schema) -> str:
    """An attribute schema as JSON (a list of groups: name, values, fields, description), for artifacts."""
    return json.dumps(
        [
            {"name": g.name, "values": list(g.values), "fields": list(g.fields), "description": g.description}
            for g in schema.groups
        ]
    )


def cell_arrays(prep: Prepared, train_codes: np.ndarray | None) -> dict[str, np.ndarray]:
    """What a cell artifact holds beside its evaluation, so that explain/query need only the results dir:
    packed training codes, pids and cameras of every split, their identity attributes (int16, -1
    unknown) and the attribute schema (JSON)."""
    out: dict[str, np.ndarray] = {}
    if train_codes is not None:
        out["train_codes"] = search.pack_codes(train_codes)
    for split in ("train", "query", "gallery"):
        arrays = prep.splits.arrays[split]
        out[f"{split}_pids"], out[f"{split}_camids"] = arrays.pids, arrays.camids
        if prep.attributes is not None:
            out[f"{split}_attributes"] = prep.attributes.lookup(arrays.pids).astype(np.int16)
    if prep.attributes is not None:
        out["schema"] = np.array(schema_json(prep.attributes.schema))
    return out


def run_attribute_queries(
    prep: Prepared, store: ResultStore, train_codes, gallery_codes, key: dict, prov: dict, tag: str
) -> None:
    """Search by description (:mod:`hashbench.semantic`): a decoder fitted on the training codes and
    attributes, evaluated on the gallery; rows to ``attribute_queries.csv`` (replacing a killed run's)."""
    from .semantic import AttributeDecoder, evaluate_attribute_queries

    t0 = time.perf_counter()
    table = prep.attributes
    decoder = AttributeDecoder(table.schema).fit(train_codes, table.lookup(prep.splits.arrays["train"].pids))
    gallery_pids = prep.splits.arrays["gallery"].pids
    df = evaluate_attribute_queries(decoder, gallery_codes, gallery_pids, table, seed=prov["seed"])
    date = now()
    store.save_attribute_queries([{**key, **r, **prov, "date": date} for r in df.to_dict("records")])
    first, last = df.iloc[0], df.iloc[-1]
    log.info(
        "%s: attribute queries in %.1f s: rank-1 %.1f with %d attribute(s), %.1f with %d",
        tag,
        time.perf_counter() - t0,
        first.rank1,
        first.n_attributes,
        last.rank1,
        last.n_attributes,
    )


def run(
    config: RunConfig, registry: Registry | None = None, on_row: Callable[[ResultRow], None] | None = None
) -> list[ResultRow]:
    """Run the grid; returns the rows computed by this call (cells finished earlier are skipped)."""
    t_run = time.perf_counter()
    registry = registry or Registry.load()
    methods = list(config.methods)
    for name in methods:
        registry.method(name)  # unknown name: error before any work
    parse_method_params(methods, registry, config.method_params)
    resolve_device(config.device)  # a bad --device fails before any data is read
    unknown_inputs = set().union(*(registry.method(m).consumes for m in methods)) - set(INPUTS)
    if unknown_inputs:
        raise HashbenchError(f"a method consumes unknown input(s) {sorted(unknown_inputs)}; known: {INPUTS}")
    out = Path(config.out or Path("results") / config.dataset)
    store = ResultStore(out)
    seed_everything(config.seed)
    commit = git_commit()  # the code that runs is the code at start
    prep = setup(config, registry)
    name_of = prep.name

    # the grid and its config hashes, known before any heavy work: a finished grid costs nothing
    ref_hash = digest_of({**prep.base_config, "method": REFERENCE, "metric": "cosine"})
    do_reference = config.reference and not store.finished(name_of, REFERENCE, None, ref_hash)
    grid = []
    for name, bits in ((m, b) for m in methods for b in config.bits):
        method = make_method(registry.method(name), bits, config)
        chash = digest_of({**prep.base_config, "method": name, "params": method.get_params()})
        grid.append((name, bits, method, chash, store.finished(name_of, name, bits, chash) is not None))
    pending = [cell for cell in grid if not cell[4]]
    if config.reference and not do_reference:
        log.info("%s: finished earlier, skipped", REFERENCE)
    if not pending and not do_reference:
        log.info("all %d cells finished earlier (%s); nothing to do", len(grid), store.csv)
        return []
    need = set().union(*(cell[2].consumes for cell in pending)) | ({"features"} if do_reference else set())
    load_inputs(prep, config, need)
    dev = device_name(str(prep.device))
    counts = {s: len(prep.splits.records[s]) for s in ("train", "query", "gallery")}
    rows: list[ResultRow] = []

    def emit(
        method: str, bits: int | None, ev, train_s, encode_s, query_ms, nbytes, chash, artifact, t_cell
    ) -> None:
        m = ev.to_dict()
        row = ResultRow(
            dataset=prep.name,
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
            cell_s=time.perf_counter() - t_cell,
            bytes_per_code=nbytes,
            n_train=counts["train"],
            n_query=counts["query"],
            n_gallery=counts["gallery"],
            backbone=f"{prep.backbone.name}/{prep.cut}",
            input_size="x".join(map(str, prep.input_size)),
            seed=config.seed,
            device=dev,
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

    q, g = prep.splits.arrays["query"], prep.splits.arrays["gallery"]
    if do_reference:
        fq, fg = prep.inputs["features"]["query"], prep.inputs["features"]["gallery"]
        t_cell = t0 = time.perf_counter()
        ranking = search.float_rank(fq, fg, metric="cosine")
        query_ms = (time.perf_counter() - t0) * 1000 / len(fq)
        ev = metrics.evaluate_rankings(ranking, q.pids, q.camids, g.pids, g.camids)
        art = store.save_artifact(store.artifact_path(REFERENCE, None, ref_hash), ap=ev.ap, cmc=ev.cmc)
        emit(
            REFERENCE,
            None,
            ev,
            prep.timings.get("ide_train_s", 0.0),
            prep.timings.get("ide_embed_s", 0.0),
            query_ms,
            fq.shape[1] * 4,
            ref_hash,
            art,
            t_cell,
        )
        log.info("%s: mAP %.2f, rank-1 %.2f", REFERENCE, ev.to_dict()["map"], ev.to_dict()["rank1"])

    for k, (name, bits, method, chash, done) in enumerate(grid, 1):
        consumes = method.consumes  # may depend on the method's hyperparameters (finetune)
        tag = f"cell {k}/{len(grid)} {name} @ {bits} bits"
        if done:
            log.info("%s: finished earlier, skipped", tag)
            continue
        log.info("%s: training", tag)
        seed_everything(config.seed)
        t_cell = time.perf_counter()
        context = Context(
            device=str(prep.device),
            schema=prep.attributes.schema if prep.attributes else None,
            backbone=prep.backbone,
            progress=config.progress,
            extras={"cut": prep.cut},
        )
        t0 = time.perf_counter()
        method.fit(make_view(prep, "train", consumes), context)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        q_codes = check_codes(method.encode(make_view(prep, "query", consumes)), len(q.pids), bits, name)
        g_codes = check_codes(method.encode(make_view(prep, "gallery", consumes)), len(g.pids), bits, name)
        encode_s = time.perf_counter() - t0
        ev, query_ms = evaluate_codes(prep, q_codes, g_codes, config.search_backend)
        t_codes = None
        if prep.attributes is not None:  # the attribute decoder (and explain, query) learn from these
            t0 = time.perf_counter()
            n_train = len(prep.splits.arrays["train"].pids)
            t_codes = check_codes(method.encode(make_view(prep, "train", consumes)), n_train, bits, name)
            log.info("%s: training split encoded in %.1f s (not in encode_s)", tag, time.perf_counter() - t0)
        path = store.artifact_path(name, bits, chash)
        art = store.save_artifact(
            path,
            ap=ev.ap,
            cmc=ev.cmc,
            query_codes=search.pack_codes(q_codes),
            gallery_codes=search.pack_codes(g_codes),
            **cell_arrays(prep, t_codes),
        )
        store.save_method(path, method)
        if config.attribute_queries and t_codes is not None:
            key = {"dataset": prep.name, "method": name, "bits": bits}
            prov = {"config_hash": chash, "commit": commit, "seed": config.seed}
            run_attribute_queries(prep, store, t_codes, g_codes, key, prov, tag)
        emit(name, bits, ev, train_s, encode_s, query_ms, search.bytes_per_code(bits), chash, art, t_cell)
        d = ev.to_dict()
        log.info("%s: mAP %.2f, rank-1 %.2f (train %.1f s)", tag, d["map"], d["rank1"], train_s)
    log.info("%s", wall_summary(rows, time.perf_counter() - t_run))
    return rows


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
