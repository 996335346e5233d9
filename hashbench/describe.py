"""Search by description for one cell: every decoder, the oracle, and photo + description.

What the runner does after encoding a cell on a dataset with attributes, and what ``hashbench describe``
does again from a finished cell's artifact (its packed codes of every split, pids, cameras and
identity attributes: no refitting). For each decoder (the generic ones of ``--decoders``, then the
method's own, :meth:`hashbench.method.HashMethod.decoder`), fitted on the training codes:

* :func:`hashbench.semantic.evaluate_attribute_queries` -> rows of ``attribute_queries.csv`` (its
  ``decoder`` column names the decoder);
* :func:`hashbench.semantic.evaluate_photo_description` -> rows of ``photo_description.csv``.

The oracle (:func:`hashbench.semantic.evaluate_oracle`, the true attributes, ties at random) depends on
the dataset and the seed, not on a method: one set of rows per results folder, ``method`` and
``decoder`` ``oracle``, no ``bits``, keyed by :func:`oracle_hash`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .data import AttributeTable
from .decoders import Decoder
from .keys import digest_of
from .results import AQ_NAME, ResultStore, now, read_store_frame
from .semantic import ALPHAS, ORACLE, evaluate_attribute_queries, evaluate_oracle, evaluate_photo_description

log = logging.getLogger(__name__)


@dataclass
class CellCodes:
    """What describing a cell needs: codes (unpacked 0/1) and labels of its splits, and the attributes."""

    train_codes: np.ndarray
    train_attributes: np.ndarray  # (n_train, G) -1 unknown
    query_codes: np.ndarray | None
    query_pids: np.ndarray | None
    query_camids: np.ndarray | None
    gallery_codes: np.ndarray
    gallery_pids: np.ndarray
    gallery_camids: np.ndarray | None
    table: AttributeTable  # identity -> values (the test identities at least)


def table_from_splits(schema, pids: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> AttributeTable:
    """An identity table from per-image pids and attributes (identity-level: the first row of each id)."""
    p = np.concatenate([np.asarray(a, np.int64) for a in pids])
    v = np.concatenate([np.asarray(a, np.int64) for a in values])
    keep = p > 0
    ids, first = np.unique(p[keep], return_index=True)
    return AttributeTable(schema, ids, v[keep][first])


def cell_table(cell) -> AttributeTable:
    """The identity table of a finished cell's artifact (:class:`hashbench.cells.Cell`): the attributes
    of every split it holds."""
    splits = [s for s in ("train", "query", "gallery") if f"{s}_attributes" in cell.arrays]
    return table_from_splits(
        cell.schema, [cell.arrays[f"{s}_pids"] for s in splits], [cell.attributes(s) for s in splits]
    )


def describe_cell(
    decoders: Sequence[Decoder],
    cell: CellCodes,
    key: dict,
    prov: dict,
    photo_description: bool = True,
    tag: str = "",
    alphas_of: Callable[[str], Sequence[float]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """(attribute-query rows, photo + description rows) of one cell, every decoder; ``key``: dataset,
    method, bits; ``prov``: config_hash, commit, seed; ``alphas_of``: decoder name -> the alphas of its
    photo + description rows (default: :data:`hashbench.semantic.ALPHAS`)."""
    aq_rows, pd_rows = [], []
    date = now()
    seed = int(prov["seed"])
    for decoder in decoders:
        t0 = time.perf_counter()
        decoder.fit(cell.train_codes, cell.train_attributes)
        t_fit = time.perf_counter() - t0
        df = evaluate_attribute_queries(decoder, cell.gallery_codes, cell.gallery_pids, cell.table, seed=seed)
        common = {**key, "decoder": decoder.name}
        aq_rows += [{**common, **r, **prov, "date": date} for r in df.to_dict("records")]
        t1 = time.perf_counter()
        msg = ""
        if photo_description and cell.query_codes is not None:
            pdf = evaluate_photo_description(
                decoder,
                cell.query_codes,
                cell.query_pids,
                cell.query_camids,
                cell.gallery_codes,
                cell.gallery_pids,
                cell.gallery_camids,
                cell.table,
                alphas=ALPHAS if alphas_of is None else alphas_of(decoder.name),
                seed=seed,
            )
            pd_rows += [{**common, **r, **prov, "date": date} for r in pdf.to_dict("records")]
            photo = pdf[pdf["description"] == "none"]["map"].iloc[0]
            msg = f"; photo + description rows for {pdf['alpha'].nunique()} alphas (photo alone mAP {photo:.1f})"
        first, last = df.iloc[0], df.iloc[-1]
        log.info(
            "%s: decoder %s fitted in %.1f s, queries %.1f s: rank-1 %.1f with %d attribute(s), %.1f with %d%s",
            tag,
            decoder.name,
            t_fit,
            time.perf_counter() - t1 + (t1 - t0 - t_fit),
            first.rank1,
            first.n_attributes,
            last.rank1,
            last.n_attributes,
            msg,
        )
    return aq_rows, pd_rows


def oracle_hash(dataset_config: dict, dataset_digest: str, gallery_pids: np.ndarray, seed: int) -> str:
    """The key of a folder's oracle rows: the dataset (its configuration and content digest), the
    searched gallery's identities and the seed of the draws and ties."""
    ids = np.unique(np.asarray(gallery_pids)[np.asarray(gallery_pids) > 0])
    return digest_of(
        {
            "oracle": 1,
            "dataset": dataset_config,
            "dataset_digest": dataset_digest,
            "gallery_ids": digest_of(ids.tolist()),
            "seed": int(seed),
        }
    )


def has_oracle(store: ResultStore, dataset: str, chash: str) -> bool:
    aq = read_store_frame(store.out / AQ_NAME, "attribute-query file", dtype=str, keep_default_na=False)
    if aq is None or "config_hash" not in aq.columns:
        return False
    return bool(((aq["method"] == ORACLE) & (aq["dataset"] == dataset) & (aq["config_hash"] == chash)).any())


def write_oracle(
    store: ResultStore, dataset: str, schema, gallery_pids, table, chash: str, commit: str, seed: int
) -> list[dict]:
    """Compute and store the oracle rows (replacing earlier ones of the same key); returns them."""
    t0 = time.perf_counter()
    df = evaluate_oracle(schema, gallery_pids, table, seed=seed)
    date = now()
    key = {"dataset": dataset, "method": ORACLE, "bits": "", "decoder": ORACLE}
    prov = {"config_hash": chash, "commit": commit, "seed": seed, "date": date}
    rows = [{**key, **r, **prov} for r in df.to_dict("records")]
    store.save_attribute_queries(rows)
    log.info(
        "oracle (true attributes, ties at random) in %.1f s: rank-1 %.1f with %d attribute(s), %.1f with %d",
        time.perf_counter() - t0,
        df.iloc[0].rank1,
        df.iloc[0].n_attributes,
        df.iloc[-1].rank1,
        df.iloc[-1].n_attributes,
    )
    return rows


def describe_results(
    results_dir,
    methods: Sequence[str] | None = None,
    bits: int | None = None,
    decoders: Sequence[str] | None = None,
    photo_description: bool = True,
    decoder_params: dict[str, dict] | None = None,
) -> dict[str, int]:
    """``hashbench describe``: search by description again for finished cells, from their artifacts
    (codes, labels, attributes; nothing refitted but the decoders), with the decoders of this version,
    and the folder's oracle. A method's own decoder needs its fitted method restored without the run's
    pipeline; where that fails (a deep method needs its backbone) it is skipped, saying so. Rows replace
    the cells' earlier ones. Returns the number of rows written per file."""
    from pathlib import Path

    from .cells import load_cell, read_rows
    from .configs import read_configs
    from .data import AttributeGroup, AttributeSchema
    from .decoders import DEFAULT_DECODERS, make_decoders
    from .errors import HashbenchError
    from .explain import select_cells
    from .method import Context
    from .registry import Registry
    from .results import git_commit

    results_dir = Path(results_dir)
    rows = read_rows(results_dir)
    chosen = select_cells(results_dir, methods, bits)
    registry = Registry.load()
    names = list(decoders or DEFAULT_DECODERS)
    probe = AttributeSchema((AttributeGroup("probe", ("a", "b"), ("probe",)),))
    make_decoders(names, probe, registry, decoder_params)  # bad names and keys: before any work
    store = ResultStore(results_dir)
    commit = git_commit()
    records = read_configs(results_dir)
    counts = {"attribute_queries": 0, "photo_description": 0, "oracle": 0}
    oracle_done = False
    for method, b in chosen:
        cell = load_cell(results_dir, method, b, rows)
        cell.require("train_codes", "gallery_codes", "train_attributes", "gallery_attributes", "schema")
        schema = cell.schema
        if schema is None or len(schema) == 0:
            raise HashbenchError(f"artifact {cell.path}: the dataset has no attribute schema")
        table = cell_table(cell)
        has_query = all(
            k in cell.arrays for k in ("query_codes", "query_pids", "query_camids", "gallery_camids")
        )
        codes = CellCodes(
            train_codes=cell.codes("train"),
            train_attributes=cell.attributes("train"),
            query_codes=cell.codes("query") if has_query else None,
            query_pids=cell.arrays.get("query_pids"),
            query_camids=cell.arrays.get("query_camids"),
            gallery_codes=cell.codes("gallery"),
            gallery_pids=cell.arrays["gallery_pids"],
            gallery_camids=cell.arrays.get("gallery_camids"),
            table=table,
        )
        chosen_decoders = make_decoders(names, schema, registry, decoder_params)
        try:
            fitted = cell.fitted_method(Context(schema=schema), registry=registry)
            own = fitted.decoder(schema) if fitted is not None else None
        except HashbenchError as exc:
            log.info("%s @ %d bits: its own decoder skipped (%s)", method, b, str(exc).splitlines()[0])
            own = None
        if own is not None:
            chosen_decoders.append(own)
        seed = int(cell.row.get("seed") or 0)
        key = {"dataset": cell.dataset, "method": method, "bits": b}
        prov = {"config_hash": cell.row.get("config_hash", ""), "commit": commit, "seed": seed}
        aq_rows, pd_rows = describe_cell(
            chosen_decoders, codes, key, prov, photo_description, f"{method} @ {b} bits"
        )
        store.save_attribute_queries(aq_rows)
        counts["attribute_queries"] += len(aq_rows)
        if pd_rows:
            store.save_photo_description(pd_rows)
            counts["photo_description"] += len(pd_rows)
        if not oracle_done:
            record = records.get(cell.row.get("config_hash", ""), {}).get("config", {})
            chash = oracle_hash(
                record.get("dataset", {"name": cell.dataset}),
                record.get("dataset_digest", ""),
                cell.arrays["gallery_pids"],
                seed,
            )
            if not has_oracle(store, cell.dataset, chash):
                got = write_oracle(
                    store, cell.dataset, schema, cell.arrays["gallery_pids"], table, chash, commit, seed
                )
                counts["oracle"] = len(got)
            oracle_done = True
    return counts
