"""Semantic and photo search over a finished cell's gallery codes (``hashbench query``).

A query is a description (``gender=female,upper_color=red``), a pedestrian photo, or both:

* **description**: an :class:`~hashbench.semantic.AttributeDecoder` fitted on the cell's training codes
  and identity attributes turns the description into expected bit values and weights, and the gallery
  is ranked by :func:`~hashbench.semantic.rank_by_description`;
* **photo**: the image goes through the run's own pipeline (resize and normalise as the feature cache
  does, the backbone trunk at the run's cut, the cached IDE model when the method consumes features,
  then the fitted method's ``encode``) and the gallery is ranked by Hamming distance (ties: gallery
  order, as in the benchmark);
* **both**: :func:`~hashbench.semantic.combined_distance` with weight ``alpha``.

The dataset and backbone are set up through :func:`hashbench.runner.setup`, so the gallery records (and
their crops, for the contact sheet) are those the run encoded; a mismatch (other ``--data-root`` or
``--dataset-option`` than the run's) is an error, not a wrong picture.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cells import Cell, load_cell, run_hint
from .errors import HashbenchError
from .features import TrunkKey, default_cache_dir, digest_of
from .method import View, check_codes
from .results import CSV_NAME

log = logging.getLogger(__name__)

HOLDOUT = re.compile(r"^(?P<name>.+)-holdout(?P<n>\d+)$")
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
        return (
            head + "\n\n" + tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True) + legend
        )


# ------------------------------------------------------------------------------------------- setup


def prepare_dataset(
    cell: Cell, dataset: str, data_root, dataset_options: dict, weights: str, cache_dir, device
):
    """The run's dataset, splits and backbone (:func:`hashbench.runner.setup`), checked against the cell."""
    from .registry import Registry
    from .runner import RunConfig, setup

    backbone, _, cut = cell.row.get("backbone", "mobilenetv2/").partition("/")
    size = cell.row.get("input_size", "")
    input_size = tuple(int(t) for t in size.split("x")) if size else None
    m = HOLDOUT.match(cell.dataset)
    name = m["name"] if m else cell.dataset
    if name != dataset:
        raise HashbenchError(
            f"--dataset {dataset}: the cell {cell.path} comes from a run on {name!r}; pass --dataset {name}"
        )
    config = RunConfig(
        dataset=dataset,
        data_root=data_root,
        dataset_options=dataset_options,
        backbone=backbone or "mobilenetv2",
        weights=weights,
        cut=cut or None,
        input_size=input_size,
        seed=int(cell.row.get("seed") or 0),
        device=device,
        cache_dir=cache_dir,
        holdout=int(m["n"]) if m else 0,
        progress=False,
    )
    prep = setup(config, Registry.load())
    gallery = prep.splits.arrays["gallery"]
    cell.require("gallery_pids")
    if not np.array_equal(gallery.pids, cell.arrays["gallery_pids"]):
        raise HashbenchError(
            f"the gallery of dataset {dataset!r} ({len(gallery.pids)} images) is not the one of {cell.path} "
            f"({len(cell.arrays['gallery_pids'])} images): pass the run's --data-root and --dataset-option"
        )
    return prep, config


def _ide_model(prep, config, cell: Cell, method) -> torch.nn.Module:
    """The run's cached IDE model, identified by the cell's config hash (see :mod:`hashbench.ide`)."""
    from .ide import IDEConfig, IDEModel

    backbone, cut, dataset = prep.backbone, prep.cut, prep.dataset
    cache = Path(config.cache_dir or default_cache_dir())
    key = TrunkKey(
        dataset.name, dataset.digest(), backbone.name, backbone.weights_digest, cut, tuple(prep.input_size)
    ).digest()
    if "holdout" in prep.base_config:
        key = digest_of({"trunk": key, "holdout": prep.base_config["holdout"]})

    def folder_of(ide: dict) -> Path:
        return cache / "ide" / digest_of({"trunk": key, "ide": ide, "backbone": backbone.name, "cut": cut})

    def cell_hash(ide: dict) -> str:
        return digest_of(
            {**prep.base_config, "ide": ide, "method": cell.method, "params": method.get_params()}
        )

    default = asdict(IDEConfig(seed=config.seed))
    candidates = {str(folder_of(default)): default} if (folder_of(default) / "model.pt").is_file() else {}
    for path in sorted((cache / "ide").glob("*/model.pt")):  # runs with other --ide options
        if str(path.parent) in candidates:
            continue
        state = torch.load(path, map_location="cpu", weights_only=False)
        ide = state.get("config")
        if isinstance(ide, dict) and folder_of(ide) == path.parent:
            candidates[str(path.parent)] = ide
    chosen = [f for f, ide in candidates.items() if cell_hash(ide) == cell.row.get("config_hash")]
    if not chosen and len(candidates) == 1:
        chosen = list(candidates)
        log.warning("the cached IDE model does not reproduce the cell's config hash; using it anyway")
    if len(chosen) != 1:
        raise HashbenchError(
            f"no cached IDE model of this run under {cache / 'ide'} (the method consumes adapted features): "
            f"run `{cell.hint()} --cache-dir {cache}` first"
            if not chosen
            else f"several cached IDE models under {cache / 'ide'} match this run: {', '.join(chosen)}"
        )
    state = torch.load(Path(chosen[0]) / "model.pt", map_location="cpu", weights_only=False)
    model = IDEModel(backbone.top(cut), backbone.out_channels, state["n_classes"])
    model.load_state_dict(state["model"])
    return model.to(prep.device).eval()


class _OneImage:
    """An :class:`~hashbench.features.ImageSource` of one already-normalised image tensor."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, index) -> torch.Tensor:
        return self.x[list(index)]

    def subset(self, index) -> _OneImage:
        return _OneImage(self.x[list(index)])


def open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise HashbenchError(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise HashbenchError(f"--image {path}: cannot read the image ({exc})") from None


def encode_image(prep, config, cell: Cell, path: Path) -> np.ndarray:
    """(bits,) code of a pedestrian photo, through the run's pipeline (trunk, IDE stage, the method)."""
    from .backbones import to_tensor
    from .ide import embed_maps

    method = cell.fitted_method(required=True)
    consumes = method.consumes
    x = to_tensor([open_image(path)], prep.input_size)
    with torch.inference_mode():
        trunk = prep.backbone.trunk(prep.cut).to(prep.device)
        # float16 like the feature cache, so the photo's maps are those a cached gallery image would have
        maps = trunk(x.to(prep.device)).to("cpu", torch.float16).numpy()
    extra: dict = {}
    if "features" in consumes:
        extra["features"] = embed_maps(_ide_model(prep, config, cell, method), maps, prep.device)
    if "maps" in consumes:
        extra["maps"] = maps
    if "attributes" in consumes:
        n_groups = len(cell.schema) if cell.schema is not None else 0
        extra["attributes"] = np.full((1, n_groups), -1, dtype=np.int16)
    if "images" in consumes:
        extra["images"] = _OneImage(x)
    view = View("query", np.array([-1]), np.array([0]), **extra)
    with torch.inference_mode():
        codes = method.encode(view)
    return check_codes(codes, 1, cell.bits, cell.method)[0]


# ------------------------------------------------------------------------------------------- query


def run_query(
    dataset: str,
    method: str,
    bits: int,
    attributes: str | None = None,
    image: str | Path | None = None,
    alpha: float = 1.0,
    top: int = 10,
    results_dir: str | Path | None = None,
    out: str | Path | None = None,
    data_root: str | None = None,
    dataset_options: dict | None = None,
    weights: str = "imagenet",
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> QueryResult:
    """Rank the cell's gallery by a description and/or a photo; write the contact sheet to ``out``."""
    if not attributes and image is None:
        raise HashbenchError("give --attributes NAME=VALUE,... and/or --image PATH")
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
    prep, config = prepare_dataset(
        cell,
        dataset,
        data_root,
        dataset_options or {},
        weights,
        Path(cache_dir) if cache_dir else None,
        device,
    )
    gallery = cell.codes("gallery")
    n = len(gallery)
    hamming = description = None
    code = None
    if image is not None:
        code = encode_image(prep, config, cell, image)
        hamming = (gallery != code[None, :]).sum(1)
    if query:
        from . import semantic

        decoder = semantic.AttributeDecoder(cell.schema).fit(cell.codes("train"), cell.attributes("train"))
        description = np.asarray(semantic.description_distance(decoder, query, gallery), dtype=float)
    if query and code is not None:
        distance = np.asarray(semantic.combined_distance(decoder, query, code, gallery, alpha), dtype=float)
        order = np.argsort(distance, kind="stable")
    elif query:
        distance = description
        order = np.asarray(semantic.rank_by_description(decoder, query, gallery))
    else:
        distance = hamming.astype(float)
        order = np.argsort(distance, kind="stable")
    records = prep.splits.records["gallery"]
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
    result = QueryResult(cell, query, image, hits, query_code=code)
    png = Path(out) if out else results_dir / f"query_{method}_{bits}.png"
    result.png = contact_sheet(result, prep.dataset, records, png)
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
