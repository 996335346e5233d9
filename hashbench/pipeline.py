"""The pipeline: a run's configuration -> its cached inputs -> the :class:`~hashbench.method.View` a method
sees; and one new image -> a view through the same steps.

DESIGN.md's picture, in code: dataset plugin -> records and identity attributes; backbone trunk (frozen,
run once) -> trunk maps in the feature cache; the IDE stage -> adapted pooled features (cached); and the
views, contexts and keys every consumer shares. The runner (:mod:`hashbench.runner`) is the grid loop
over it; ``hashbench query`` and ``hashbench explain`` read what it recorded.

Every key is computed here, once, in :meth:`Pipeline.setup` (see :mod:`hashbench.keys` for what each is
made of): the trunk key, the IDE stage's input key (the trunk key, or its hold-out key in a validation
run) and folder key, and the base of every cell's configuration. :meth:`Pipeline.record` turns them
into the record ``configs.jsonl`` keeps beside a cell's row (:mod:`hashbench.configs`).

Usable without the runner, e.g. in a notebook::

    pipe = Pipeline.setup(RunConfig(dataset="synthetic")).load({"features"})
    method = pipe.method("itq", bits=64).fit(pipe.view("train", {"features"}), pipe.context())
    evaluation, query_ms = pipe.evaluate(method.encode(pipe.view("query")), method.encode(pipe.view("gallery")))
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics, search
from .backbones import Backbone, to_tensor
from .data import AttributeTable, Dataset, Splits, check_attribute_coverage, holdout_splits
from .engines import AUTO, resolve_engine
from .errors import HashbenchError
from .features import FeatureCache, ImageSource, resolve_device, trunk_key
from .ide import IDEConfig, IDEModel, adapted_features, embed_maps, load_ide_model
from .keys import TrunkKey, digest_of, holdout_key, ide_key, resolve_cache_dir
from .method import INPUTS, NEEDS_IDE, NEEDS_MAPS, SPLIT_INPUTS, Context, HashMethod, View
from .registry import Registry

log = logging.getLogger(__name__)

REFERENCE = "ide-float"  # the real-valued reference row: adapted features, cosine distance
VALIDATION_DIR = "validation"


@dataclass
class RunConfig:
    """Everything a run depends on; the per-cell config hash is derived from it.

    ``seed`` is the run's one seed: the hold-out draw, the IDE stage and every method get it.
    """

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
    # deep methods: all of --bits from one trained top (hashbench.deep.SHARED_TOP): True for every deep
    # method (--shared-top), False for none (--no-shared-top), None: the methods' own default
    # (``shared_top_default``: DeepSSH), for a --bits of two or more lengths
    shared_top: bool | None = None
    holdout: int = 0  # > 0: validation run; that many training ids become query/gallery, test split unused
    holdout_distractors: int = 0  # validation run: that many more training ids in its gallery only
    attribute_queries: bool = True  # search by description per cell (datasets with attributes)
    decoders: Sequence[str] = ("naive-bayes", "logistic")  # generic attribute decoders (hashbench.decoders)
    decoder_params: dict[str, dict] = field(default_factory=dict)  # decoder name -> hyperparameters
    photo_description: bool = True  # photo + description queries per cell (with attribute_queries)
    # "all": every alpha of hashbench.semantic.ALPHAS; "validation": 0 and the alphas `pick-alpha` recorded
    # in <out>/validation/photo_description_alpha.csv for the cell (none recorded: the photo alone)
    photo_description_alphas: str = "all"
    # filled by the runner in "validation" mode: (method, bits, decoder, description) -> alpha, read once
    # on the driver (so Ray workers need not reach the file)
    alpha_choice: dict | None = None
    engine: str = AUTO  # what runs the trunk for the feature cache (hashbench.engines.resolve_engine)
    # where the cells are computed (hashbench.distributed); none of these enter a cell's configuration
    executor: str = "local"  # "local": this process, one cell after another; "ray": Ray tasks
    ray_address: str | None = None  # an existing Ray cluster ("auto", "HOST:6379"); None: a local one
    ray_cpus_per_cell: float = 1.0  # the CPUs a cell's task declares (and its torch threads)

    def results_dir(self) -> Path:
        """``out``, else ``results/<dataset>`` — and ``results/<dataset>/validation`` for a validation
        run, so that tuning rows never land beside (or on the leaderboard as) test-split rows."""
        if self.out is not None:
            return Path(self.out)
        return Path("results") / self.dataset / (VALIDATION_DIR if self.holdout else "")

    def ide_spec(self) -> dict:
        """The IDE stage's settings with the run's seed, as its key and the cell configs record them."""
        return {**asdict(self.ide), "seed": self.seed}


@dataclass(frozen=True)
class Keys:
    """The cache keys of a run, computed once by :meth:`Pipeline.setup`."""

    trunk: TrunkKey  # the cached trunk maps of the dataset's splits
    ide_input: str  # the maps the IDE stage trains on: the trunk key, or its hold-out key
    ide: str  # the IDE stage's cache folder

    def as_record(self, consumes: Iterable[str]) -> dict:
        out = {"trunk": self.trunk.digest(), "trunk_spec": self.trunk.spec(), "ide_input": self.ide_input}
        if NEEDS_IDE & set(consumes):
            out["ide"] = self.ide
        return out


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the runner does, before every cell)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_method(klass: type[HashMethod], bits: int, config: RunConfig) -> HashMethod:
    """Instantiate a method for a cell: the user's ``--param`` values, then the run-level options the
    method declares in ``run_options`` (``finetune``) and ``shared_top`` (:func:`shares_top`,
    :data:`~hashbench.deep.SHARED_TOP`) where the user gave none."""
    params = dict(config.method_params.get(klass.name, {}))
    run_level = {"finetune": config.finetune}
    for option in getattr(klass, "run_options", frozenset()):
        if option in run_level:
            params.setdefault(option, run_level[option])
    if shares_top(klass, config):
        params.setdefault("shared_top", ",".join(map(str, sorted(set(config.bits)))))
    return klass(bits=bits, seed=config.seed, **params)


def shares_top(klass: type[HashMethod], config: RunConfig) -> bool:
    """Whether the runner gives ``klass`` a shared top over the run's ``--bits``: ``--shared-top`` for
    every method that takes ``shared_top``, ``--no-shared-top`` for none, else the class's
    ``shared_top_default`` when ``--bits`` has two or more lengths (a ``--param`` wins over all)."""
    if "shared_top" not in inspect.signature(klass.__init__).parameters:
        return False
    if config.shared_top is not None:
        return bool(config.shared_top)
    return bool(getattr(klass, "shared_top_default", False)) and len(set(config.bits)) >= 2


def check_method_params(methods: Sequence[str], registry: Registry, params: dict[str, dict]) -> None:
    """Fail early on unknown methods or hyperparameters (before any heavy work)."""
    for name in methods:
        klass = registry.method(name)
        accepted = inspect.signature(klass.__init__).parameters
        bad = [k for k in params.get(name, {}) if k not in accepted]
        if bad:
            valid = [p for p in accepted if p not in ("self", "bits", "seed")]
            raise HashbenchError(
                f"--param {name}.{bad[0]}: unknown hyperparameter; valid: {', '.join(valid)}"
            )
    for name in params:
        if name not in methods:
            raise HashbenchError(f"--param {name}.*: method {name!r} is not in --methods")


class Pipeline:
    """One run's dataset, backbone, keys and (after :meth:`load`) cached inputs of every split."""

    def __init__(self, config: RunConfig, registry: Registry) -> None:
        # the cheap part: records, attributes, backbone and weights, keys (no feature is read)
        self.config, self.registry = config, registry
        dataset: Dataset = registry.dataset(config.dataset)(config.data_root, **config.dataset_options)
        backbone: Backbone = registry.backbone(config.backbone)(config.weights)
        self.dataset = dataset
        splits = Splits(dataset.splits())
        self.source_records = splits.records  # the records the trunk maps are computed on
        self.source_index: dict[str, np.ndarray] | None = None
        self.name = dataset.name  # the dataset column of the rows
        if config.holdout:  # validation: query/gallery from held-out training ids; the test split is unused
            splits, self.source_index = holdout_splits(
                splits.records["train"], config.holdout, config.seed, config.holdout_distractors
            )
            self.source_records = {"train": self.source_records["train"]}
            self.name = holdout_name(dataset.name, config.holdout, config.holdout_distractors)
        self.splits = splits
        self.attributes: AttributeTable | None = dataset.attributes()
        if self.attributes is not None:  # another dataset's file: an error before any image is read
            test = np.concatenate([splits.arrays["query"].pids, splits.arrays["gallery"].pids])
            labels = ("training", "held-out") if config.holdout else ("training", "test")
            check_attribute_coverage(
                self.attributes,
                dict(zip(labels, (splits.arrays["train"].pids, test), strict=True)),
                self.name,
            )
        self.device = resolve_device(config.device)
        self.engine = resolve_engine(config.engine, self.device)  # auto: onnxruntime on the CPU
        self.cache_root = resolve_cache_dir(config.cache_dir)
        self.input_size = tuple(config.input_size or dataset.default_input_size)
        self.backbone = backbone.load_weights(self.cache_root)
        self.cut = config.cut or backbone.default_cut
        backbone.check_cut(self.cut)
        log.info(
            "dataset %s: %s", dataset.name, ", ".join(f"{k} {len(v)}" for k, v in splits.records.items())
        )

        trunk = trunk_key(dataset, backbone, self.cut, self.input_size, self.engine)
        holdout = {"ids": config.holdout, "seed": config.seed} if config.holdout else None
        if holdout and config.holdout_distractors:  # (absent when 0: earlier runs keep their keys)
            holdout["distractor_ids"] = config.holdout_distractors
        ide_input = holdout_key(trunk.digest(), holdout) if holdout else trunk.digest()
        self.keys = Keys(trunk, ide_input, ide_key(ide_input, config.ide_spec(), backbone.name, self.cut))
        self.base_config = {
            "dataset": dataset.config(),
            "dataset_digest": trunk.dataset_digest,
            "backbone": backbone.config(),
            "cut": self.cut,
            "input_size": list(self.input_size),
            "ide": config.ide_spec(),
            "seed": config.seed,
        }
        if holdout:
            self.base_config["holdout"] = holdout
        if self.engine != "torch":  # maps of another engine differ in rounding: other cells
            self.base_config["engine"] = self.engine
        self.inputs: dict[str, dict] = {}  # input name -> split -> array (or ImageSource)
        self.ide_top: dict | None = None  # the IDE stage's top (state_dict), once "ide" is loaded
        self.timings: dict = {}

    @classmethod
    def setup(cls, config: RunConfig, registry: Registry | None = None) -> Pipeline:
        return cls(config, registry or Registry.load())

    # -- the heavy part -------------------------------------------------------------------------------
    def load(self, need: Iterable[str]) -> Pipeline:
        """Read (or compute and cache) the inputs in ``need`` for every split; returns ``self``."""
        need = set(need)
        unknown = need - set(INPUTS)
        if unknown:
            raise HashbenchError(f"a method consumes unknown input(s) {sorted(unknown)}; known: {INPUTS}")
        dataset, splits, config = self.dataset, self.splits, self.config
        if need & NEEDS_MAPS and "maps" not in self.inputs:
            self._load_maps()
        if need & NEEDS_IDE and "features" not in self.inputs:
            feats, info = adapted_features(
                self.cache_root,
                self.keys.ide,
                self.inputs["maps"],
                splits.arrays["train"].pids,
                self.backbone,
                self.cut,
                config.ide,
                self.device,
                seed=config.seed,
                progress=config.progress,
            )
            self.inputs["features"] = feats
            self.timings.update({k: v for k, v in info.items() if k.endswith("_s")})
            self.timings["ide_history"] = info.get("ide_history")
            log.info(
                "IDE stage: %d epochs, trained in %.0f s, features embedded in %.0f s",
                config.ide.epochs,
                info["ide_train_s"],
                info["ide_embed_s"],
            )
        if "ide" in need and self.ide_top is None:
            self.ide_top = {k: v.detach().cpu().clone() for k, v in self.ide_model().top.state_dict().items()}
        if "images" in need:
            self.inputs["images"] = {
                s: ImageSource(dataset, splits.records[s], self.input_size) for s in splits.records
            }
        if "attributes" in need:
            if self.attributes is None:
                raise HashbenchError(f"dataset {dataset.name!r} has no attribute table, needed by a method")
            self.inputs["attributes"] = {
                s: self.attributes.lookup(splits.arrays[s].pids) for s in splits.records
            }
        return self

    def _load_maps(self) -> None:
        cache = FeatureCache(self.cache_root)
        source = self.source_records
        maps, info = cache.trunk_maps(
            self.dataset,
            source,
            self.backbone,
            self.cut,
            self.input_size,
            self.device,
            progress=self.config.progress,
            key=self.keys.trunk,
        )
        self.timings["extract_s"] = info["extract_s_recorded"]
        n_images = sum(len(v) for v in source.values())
        if info["extract_s"]:
            fresh = info["extracted_n"]  # a resumed extraction: only the rest is timed
            log.info(
                "trunk maps of %d images extracted in %.0f s (%.1f images/s)%s",
                fresh,
                info["extract_s"],
                fresh / info["extract_s"],
                f"; {n_images - fresh} more were extracted by an earlier run" if fresh < n_images else "",
            )
        else:
            took = info["extract_s_recorded"]
            log.info(
                "trunk maps of %d images read from the cache %s%s",
                n_images,
                info["cache_dir"],
                f" (extraction took {took:.0f} s, {n_images / took:.1f} images/s)" if took else "",
            )
        if self.source_index is not None:  # validation splits are rows of the training split's maps
            maps = {s: np.ascontiguousarray(maps["train"][rows]) for s, rows in self.source_index.items()}
        self.inputs["maps"] = maps

    # -- what methods see -----------------------------------------------------------------------------
    def view(self, split: str, consumes: Iterable[str] = frozenset({"features"})) -> View:
        """The split's labels and the loaded inputs in ``consumes`` (those a split has: ``"ide"`` is lent
        in the :meth:`context` instead)."""
        arrays = self.splits.arrays[split]
        consumes = [name for name in consumes if name in SPLIT_INPUTS]
        missing = [name for name in consumes if name not in self.inputs]
        if missing:
            raise HashbenchError(f"pipeline: input(s) {', '.join(missing)} not loaded; call load() first")
        return View(
            split, arrays.pids, arrays.camids, **{name: self.inputs[name][split] for name in consumes}
        )

    def context(self, consumes: Iterable[str] = ()) -> Context:
        """What a method is lent for training: device, schema, backbone, cut, finetune, progress; and the
        IDE stage's top when ``consumes`` has ``"ide"`` (loaded first with :meth:`load`)."""
        if "ide" in consumes and self.ide_top is None:
            raise HashbenchError("pipeline: input 'ide' not loaded; call load() first")
        return Context(
            ide_top=self.ide_top if "ide" in consumes else None,
            device=str(self.device),
            schema=self.attributes.schema if self.attributes is not None else None,
            backbone=self.backbone,
            progress=self.config.progress,
            cut=self.cut,
            finetune=self.config.finetune,
        )

    def method(self, name_or_class: str | type[HashMethod], bits: int) -> HashMethod:
        """A method of this run at ``bits`` (its ``--param`` values and declared run-level options)."""
        klass = self.registry.method(name_or_class) if isinstance(name_or_class, str) else name_or_class
        return make_method(klass, bits, self.config)

    def ide_model(self) -> IDEModel:
        """The run's trained IDE model, read from the cache under its recorded key."""
        trained = load_ide_model(self.cache_root, self.keys.ide, self.backbone, self.cut, self.device)
        if trained is None:
            raise HashbenchError(
                f"no trained IDE model {self.keys.ide} under {self.cache_root / 'ide'} (the method consumes "
                f"adapted features): run the cells with `hashbench run ... --cache-dir {self.cache_root}` first"
            )
        return trained[0]

    def image_view(self, images: Sequence, consumes: Iterable[str], n_groups: int = 0) -> View:
        """A view of new pedestrian images (PIL), through the run's own steps: resize and normalise as the
        cache does, the trunk at the run's cut (float16, as cached), the IDE stage when ``features`` are
        consumed. Labels are unknown (pid -1, camera 0; attributes -1)."""
        x = to_tensor(list(images), self.input_size)
        n = len(x)
        with torch.inference_mode():
            trunk = self.backbone.trunk(self.cut).to(self.device)
            maps = trunk(x.to(self.device)).to("cpu", torch.float16).numpy()
        extra: dict = {}
        if "features" in consumes:
            extra["features"] = embed_maps(self.ide_model(), maps, self.device)
        if "maps" in consumes:
            extra["maps"] = maps
        if "attributes" in consumes:
            extra["attributes"] = np.full((n, n_groups), -1, dtype=np.int16)
        if "images" in consumes:
            extra["images"] = TensorImages(x)
        return View("query", np.full(n, -1), np.zeros(n, dtype=np.int64), **extra)

    # -- scoring --------------------------------------------------------------------------------------
    def evaluate(self, q_codes: np.ndarray, g_codes: np.ndarray, backend: str | None = None):
        """Rank the gallery by Hamming distance (ties: gallery order) and score with the Market-1501
        protocol; returns (evaluation, query ms per query)."""
        qp, gp = search.pack_codes(q_codes), search.pack_codes(g_codes)
        t0 = time.perf_counter()
        ranking = search.hamming_rank(qp, gp, backend=backend or self.config.search_backend)
        query_ms = (time.perf_counter() - t0) * 1000 / len(qp)
        return self.score(ranking), query_ms

    def score(self, ranking: np.ndarray) -> metrics.Evaluation:
        q, g = self.splits.arrays["query"], self.splits.arrays["gallery"]
        return metrics.evaluate_rankings(ranking, q.pids, q.camids, g.pids, g.camids)

    # -- configurations and their records ------------------------------------------------------------
    def cell_config(self, method: HashMethod) -> dict:
        """The digested configuration of a (method, bits) cell: its hash is the row's ``config_hash``."""
        return {**self.base_config, "method": method.name, "params": method.get_params()}

    def reference_config(self) -> dict:
        return {**self.base_config, "method": REFERENCE, "metric": "cosine"}

    def record(self, config: dict, consumes: Iterable[str], layout=None, method_class: str = "") -> dict:
        """The ``configs.jsonl`` record of a cell (see :mod:`hashbench.configs`)."""
        params = config.get("params", {})
        return {
            "config_hash": digest_of(config),
            "dataset": self.name,
            "method": config["method"],
            "bits": params.get("bits"),
            "config": config,
            "keys": self.keys.as_record(consumes),
            "consumes": sorted(consumes),
            "code_layout": None
            if layout is None
            else {str(k): [int(a), int(b)] for k, (a, b) in layout.items()},
            "method_class": method_class,
        }


class TensorImages:
    """An :class:`~hashbench.features.ImageSource` over already-normalised image tensors."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, index) -> torch.Tensor:
        return self.x[list(index)]

    def subset(self, index) -> TensorImages:
        return TensorImages(self.x[list(index)])


def holdout_name(dataset: str, ids: int, distractor_ids: int = 0) -> str:
    """The dataset column of a validation run's rows: ``market1501-holdout151``, and with distractor
    identities in its gallery ``market1501-holdout151+d100``."""
    return f"{dataset}-holdout{ids}" + (f"+d{distractor_ids}" if distractor_ids else "")


def run_config_of(record: dict, **overrides) -> RunConfig:
    """The :class:`RunConfig` that reproduces a recorded cell's pipeline (its dataset, options, backbone,
    cut, input size, IDE settings, seed, hold-out); ``overrides`` supply what a record cannot hold
    portably (``data_root``, ``cache_dir``, ``device``, ``weights``)."""
    cfg = record["config"]
    dataset = dict(cfg["dataset"])
    name, root = dataset.pop("name"), dataset.pop("root", None)
    ide = {k: v for k, v in cfg["ide"].items() if k != "seed"}
    holdout = cfg.get("holdout") or {}
    base = {
        "dataset": name,
        "data_root": root,
        "dataset_options": dataset,
        "backbone": cfg["backbone"]["name"],
        "weights": cfg["backbone"].get("weights", "imagenet"),
        "cut": cfg["cut"],
        "input_size": tuple(cfg["input_size"]),
        "ide": IDEConfig(**ide),
        "seed": int(cfg["seed"]),
        "holdout": int(holdout.get("ids", 0)),
        "holdout_distractors": int(holdout.get("distractor_ids", 0)),
        "engine": cfg.get("engine", "torch"),
        "progress": False,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig(**base)
