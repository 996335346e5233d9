"""Semantic and photo search over a finished cell's gallery codes (``hashbench query``).

A query is a description (``gender=female,upper_color=red``), a pedestrian photo, or both:

* **description**: a decoder (``--decoder``: ``naive-bayes``, ``logistic`` or the method's own, e.g.
  ``deepssh-readout``; :mod:`hashbench.decoders`) fitted on the cell's training codes and identity
  attributes scores every gallery code, and the gallery is ranked by the description's cost
  (:meth:`~hashbench.decoders.Decoder.description_cost`, lower first: the ranking of
  ``attribute_queries.csv``);
* **photo**: the image goes through the run's own pipeline (resize and normalise as the feature cache
  does, the backbone trunk at the run's cut, the cached IDE model when the method consumes features,
  then the fitted method's ``encode``) and the gallery is ranked by Hamming distance (ties: gallery
  order, as in the benchmark);
* **both**: ``hamming / bits + alpha * cost``, the ranking of ``photo_description.csv``; ``alpha``
  defaults to the one ``hashbench pick-alpha`` chose on held-out identities for this cell and decoder
  (``RESULTS/validation/photo_description_alpha.csv``), else 1 with a note that it was not chosen.

The pipeline is rebuilt from the cell's recorded configuration (``configs.jsonl``, see
:mod:`hashbench.configs`): the same dataset options, backbone, cut, input size and IDE stage (read from
the cache under its recorded key), so the gallery records (and their crops, for the contact sheet) are
those the run encoded; a mismatch (other data under ``--data-root`` than the run's) is an error, not a
wrong picture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cells import Cell, load_cell, run_hint
from .configs import CONFIGS_NAME, read_configs
from .errors import HashbenchError
from .method import check_codes
from .pipeline import Pipeline, run_config_of
from .results import CSV_NAME
from .search import hamming_distances, pack_codes

log = logging.getLogger(__name__)

MARKS = {True: "✓", False: "✗", None: "?"}


@dataclass
class Hit:
    rank: int
    index: int  # row in the gallery
    source: str
    pid: int
    camid: int
    distance: float  # what the ranking sorted on
    hamming: int | None  # to the query photo
    description: float | None  # description distance
    attributes: np.ndarray  # the identity's codes (-1 unknown)
    matches: list[bool | None]  # per queried group: has the value / not / unknown

    @property
    def mark(self) -> str | None:
        """✓ when the identity has every queried value, ✗ when it lacks one, ? when unknown; None: no query."""
        if not self.matches:
            return None
        if any(m is False for m in self.matches):
            return MARKS[False]
        return MARKS[True] if all(self.matches) else MARKS[None]


@dataclass
class QueryResult:
    cell: Cell
    query: dict[int, int]
    image: Path | None
    hits: list[Hit]
    png: Path | None = None
    query_code: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """The hits as a text table (rank, file, id, camera, distances, match marks, attributes)."""
        from tabulate import tabulate

        schema = self.cell.schema
        asked = ", ".join(
            f"{schema.groups[g].name}={schema.groups[g].values[v]}" for g, v in self.query.items()
        )
        what = " + ".join(filter(None, (f"photo {self.image}" if self.image else "", asked)))
        head = (
            f"query: {what}\n{self.cell.method} @ {self.cell.bits} bits, {self.cell.dataset} gallery of "
            f"{len(self.cell.arrays['gallery_pids'])} images"
        )
        headers = ["rank", "file", "id", "cam"]
        if self.image:
            headers.append("hamming")
        if self.query:
            headers += ["desc", "match"]
        if self.image and self.query:
            headers.append("combined")
        headers.append("attributes")
        rows = []
        for h in self.hits:
            row = [h.rank, Path(h.source).name, h.pid, h.camid]
            if self.image:
                row.append(h.hamming)
            if self.query:
                row += [f"{h.description:.3f}", "".join(MARKS[m] for m in h.matches)]
            if self.image and self.query:
                row.append(f"{h.distance:.3f}")
            row.append(schema.describe(h.attributes) if schema is not None else "")
            rows.append(row)
        legend = (
            "\nmatch: one mark per queried value, in query order (✓ has it, ✗ not, ? unknown)"
            if self.query
            else ""
        )
        legend += "".join(f"\n{note}" for note in self.notes)
        return (
            head + "\n\n" + tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True) + legend
        )


# ------------------------------------------------------------------------------------------- setup


def prepare_pipeline(
    cell: Cell, dataset: str, data_root, dataset_options: dict | None, weights, cache_dir, device
) -> Pipeline:
    """The run's pipeline, rebuilt from the cell's recorded configuration (``configs.jsonl``) and checked
    against the cell: same dataset content, same gallery."""
    record = read_configs(cell.results_dir).get(cell.row.get("config_hash", ""))
    if record is None:
        raise HashbenchError(
            f"{cell.results_dir / CONFIGS_NAME} holds no configuration {cell.row.get('config_hash')!r} of "
            f"{cell.method} at {cell.bits} bits: run `{cell.hint()}` again (finished cells are recorded, "
            "not recomputed)"
        )
    name = record["config"]["dataset"]["name"]
    if name != dataset:
        raise HashbenchError(
            f"--dataset {dataset}: the cell {cell.path} comes from a run on {name!r}; pass --dataset {name}"
        )
    config = run_config_of(
        record,
        data_root=data_root,
        dataset_options=dataset_options or None,
        weights=weights,
        cache_dir=cache_dir,
        device=device,
    )
    pipe = Pipeline.setup(config)
    if pipe.keys.trunk.dataset_digest != record["config"]["dataset_digest"]:
        raise HashbenchError(
            f"the data under {config.data_root} is not the data of {cell.path} (dataset digest "
            f"{pipe.keys.trunk.dataset_digest}, the run's {record['config']['dataset_digest']}): pass the "
            "run's --data-root and --dataset-option"
        )
    gallery = pipe.splits.arrays["gallery"]
    cell.require("gallery_pids")
    if not np.array_equal(gallery.pids, cell.arrays["gallery_pids"]):
        raise HashbenchError(
            f"the gallery of dataset {dataset!r} ({len(gallery.pids)} images) is not the one of {cell.path} "
            f"({len(cell.arrays['gallery_pids'])} images): pass the run's --data-root and --dataset-option"
        )
    if "ide" in record["keys"] and record["keys"]["ide"] != pipe.keys.ide:
        raise HashbenchError(
            f"the IDE stage of this setup ({pipe.keys.ide}) is not the cell's ({record['keys']['ide']}): "
            "pass the run's --weights"
        )
    return pipe


def open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise HashbenchError(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise HashbenchError(f"--image {path}: cannot read the image ({exc})") from None


def encode_image(pipe: Pipeline, cell: Cell, path: Path) -> np.ndarray:
    """(bits,) code of a pedestrian photo, through the run's pipeline (trunk, IDE stage, the method)."""
    method = cell.fitted_method(pipe.context(), required=True, registry=pipe.registry)
    n_groups = len(cell.schema) if cell.schema is not None else 0
    view = pipe.image_view([open_image(path)], method.consumes, n_groups)
    with torch.inference_mode():
        codes = method.encode(view)
    return check_codes(codes, 1, cell.bits, cell.method)[0]


# ------------------------------------------------------------------------------------------- query


def query_decoder(cell: Cell, pipe, name: str):
    """The decoder ``name`` fitted on the cell's training codes: a generic one (``naive-bayes``,
    ``logistic``, a registered plugin) or the cell's method's own; otherwise one line naming the valid
    ones."""
    from .decoders import make_decoders

    if name in pipe.registry.decoders:
        (chosen,) = make_decoders([name], cell.schema, registry=pipe.registry)
    else:  # only then is the fitted method loaded, for a decoder of its own
        own = cell.fitted_method(pipe.context(), registry=pipe.registry)
        chosen = own.decoder(cell.schema) if own is not None else None
        if chosen is None or chosen.name != name:
            valid = list(pipe.registry.decoders) + ([chosen.name] if chosen is not None else [])
            raise HashbenchError(f"--decoder {name}: unknown for {cell.method}; valid: {', '.join(valid)}")
    return chosen.fit(cell.codes("train"), cell.attributes("train"))


def validated_alpha(results_dir: Path, cell: Cell, decoder: str) -> tuple[float, str]:
    """The photo + description weight ``hashbench pick-alpha`` recorded for this cell's method, length
    and decoder (full description) in ``results_dir/validation``, and where it came from; 1 when none
    is recorded (said so: not a validated choice)."""
    from .report.photo_description import ALPHA_NAME, read_alpha_choice

    path = Path(results_dir) / "validation" / ALPHA_NAME
    choice = read_alpha_choice(path).get((cell.method, int(cell.bits), decoder, "full"))
    if choice is None:
        return 1.0, f"no held-out choice in {path}: the default, not a validated one; see pick-alpha"
    return choice, f"chosen on held-out identities, {path}"


def run_query(
    dataset: str,
    method: str,
    bits: int,
    attributes: str | None = None,
    image: str | Path | None = None,
    alpha: float | None = None,
    top: int = 10,
    results_dir: str | Path | None = None,
    out: str | Path | None = None,
    data_root: str | None = None,
    dataset_options: dict | None = None,
    weights: str | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    decoder: str = "naive-bayes",
) -> QueryResult:
    """Rank the cell's gallery by a description and/or a photo; write the contact sheet to ``out``."""
    if not attributes and image is None:
        raise HashbenchError("give --attributes NAME=VALUE,... and/or --image PATH")
    if alpha is not None and not (alpha >= 0 and np.isfinite(alpha)):
        raise HashbenchError(f"--alpha {alpha}: expected a number >= 0 (the weight of the description)")
    if top < 1:
        raise HashbenchError(f"--top {top}: expected a positive number of hits")
    results_dir = Path(results_dir) if results_dir else Path("results") / dataset
    if not (results_dir / CSV_NAME).is_file():
        raise HashbenchError(
            f"{results_dir / CSV_NAME} not found: run `{run_hint(dataset, method, bits, results_dir)}` first"
        )
    cell = load_cell(results_dir, method, bits)
    cell.require("gallery_codes", "gallery_pids", "gallery_camids")
    query: dict[int, int] = {}
    if attributes:
        cell.require("schema", "train_codes", "train_attributes", "gallery_attributes")
        query = cell.schema.parse(attributes)
        if not query:
            raise HashbenchError(f"--attributes {attributes!r}: expected NAME=VALUE,...")
    image = Path(image) if image is not None else None
    if image is not None:
        open_image(image)  # a bad file fails before the dataset is read
    pipe = prepare_pipeline(
        cell, dataset, data_root, dataset_options, weights, Path(cache_dir) if cache_dir else None, device
    )
    gallery = cell.codes("gallery")
    n = len(gallery)
    hamming = description = None
    code = None
    if image is not None:
        code = encode_image(pipe, cell, image)
        packed = np.ascontiguousarray(cell.arrays["gallery_codes"])
        hamming = hamming_distances(pack_codes(code[None, :]), packed, threads=1)[0].astype(np.int64)
    notes = []
    if query:
        fitted = query_decoder(cell, pipe, decoder)
        description = np.asarray(fitted.cost(query, gallery), dtype=float)
        notes.append(f"decoder {fitted.name}: desc = its cost of the description (nats per value)")
    if query and code is not None:
        if alpha is None:
            alpha, how = validated_alpha(results_dir, cell, fitted.name)
            notes.append(f"alpha {alpha:g} ({how})")
        distance = hamming / cell.bits + alpha * description
        order = np.argsort(distance, kind="stable")
    elif query:
        distance = description
        order = np.argsort(distance, kind="stable")
    else:
        distance = hamming.astype(float)
        order = np.argsort(distance, kind="stable")
    records = pipe.splits.records["gallery"]
    attrs = cell.attributes("gallery") if "gallery_attributes" in cell.arrays else np.full((n, 0), -1)
    hits = []
    for rank, i in enumerate(order[: min(top, n)], 1):
        row = attrs[i]
        matches = [None if row[g] < 0 else bool(row[g] == v) for g, v in query.items()]
        hits.append(
            Hit(
                rank,
                int(i),
                records[i].source,
                int(cell.arrays["gallery_pids"][i]),
                int(cell.arrays["gallery_camids"][i]),
                float(distance[i]),
                None if hamming is None else int(hamming[i]),
                None if description is None else float(description[i]),
                row,
                matches,
            )
        )
    result = QueryResult(cell, query, image, hits, query_code=code, notes=notes)
    png = Path(out) if out else results_dir / f"query_{method}_{bits}.png"
    result.png = contact_sheet(result, pipe.dataset, records, png)
    return result


def contact_sheet(result: QueryResult, dataset, records, path: Path, per_row: int = 11) -> Path:
    """PNG of the top crops (the query photo first), each labelled with rank, id and ✓/✗."""
    from .report import new_figure, save_figure

    crops = list(dataset.open_images([records[h.index] for h in result.hits]))
    tiles: list[tuple[object, str, str]] = []
    if result.image is not None:
        tiles.append((open_image(result.image), "query", "#1f77b4"))
    colors = {MARKS[True]: "#2ca02c", MARKS[False]: "#d62728", MARKS[None]: "0.4", None: "black"}
    for h, crop in zip(result.hits, crops, strict=True):
        who = "distractor" if h.pid == 0 else "junk" if h.pid < 0 else f"id {h.pid}"
        tiles.append((crop, f"#{h.rank} {who}" + (f" {h.mark}" if h.mark else ""), colors[h.mark]))
    cols = min(per_row, len(tiles))
    rows = -(-len(tiles) // cols)
    fig = new_figure((1.25 * cols + 0.3, 2.45 * rows + 0.7))
    schema = result.cell.schema
    asked = ", ".join(
        f"{schema.groups[g].name}={schema.groups[g].values[v]}" for g, v in result.query.items()
    )
    what = " + ".join(filter(None, ("photo" if result.image else "", asked)))
    fig.suptitle(f"{result.cell.method} @ {result.cell.bits} bits — {what}", fontsize=9)
    for k, (im, label, color) in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(np.asarray(im))
        ax.set_title(label, fontsize=8, color=color)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2 if color != "black" else 0.5)
    return save_figure(fig, path)
