"""The method contract: ``Method(bits=..., seed=..., **hyperparameters).fit(train).encode(view)``.

A method never touches files, devices it was not given, or metrics. It declares what it consumes in
``consumes`` and the runner hands it a :class:`View` holding exactly that:

``features``    pooled, re-id adapted CNN features (N, D) float32 (the IDE stage's output)
``maps``        frozen trunk feature maps (N, C, H, W) float16, for methods that train their own top
``attributes``  identity-level attribute codes (N, n_groups) int16, -1 unknown
``images``      the split's pixels, as an :class:`~hashbench.features.ImageSource` (``len``, and
                ``batch(index) -> (B, 3, H, W)`` normalised tensors), for training from pixels
                (``--finetune full``)
``ide``         not a split's array: the IDE stage's trained top (its ``state_dict()``), lent in
                :attr:`Context.ide_top` to a method that starts from it (a deep method with
                ``init="ide"``); the run trains the IDE stage for it as for ``features``

``consumes`` is a class attribute; a method whose inputs depend on a hyperparameter (a deep method
with ``finetune="full"`` reads ``images`` instead of ``maps``) overrides it on the instance.

``encode`` returns codes as an (N, bits) uint8 array of 0/1; packing and search are the core's job.
As in scikit-learn, ``__init__`` only stores hyperparameters and learned state ends in ``_``.

Optional declarations of a method class:

``run_options``   hyperparameters that the runner fills from the run-level option of the same name when
                  the user did not set them (``--param``); e.g. a deep method's ``finetune`` takes the
                  run's ``--finetune``. Empty by default.
``code_layout``   ``code_layout(schema=None)``: the named bit ranges ``{name: (start, stop)}`` of a
                  structured code, in bit order (DeepSSH: one segment per attribute group, then
                  ``"identity"``), or ``None`` (the default) for a code without named parts. Before
                  ``fit`` a method may still give the layout it would use for ``schema``, so that a
                  cell's layout can be recorded without refitting it.

``decoder``       ``decoder(schema=None)``: a reader of attributes off the method's own codes, an instance of
                  :class:`hashbench.decoders.Decoder` (``fit`` on the training codes and attributes,
                  ``value_scores`` of any codes), or ``None`` (the default). The runner evaluates search by
                  description (and photo + description) with it beside the generic decoders, in rows
                  whose ``decoder`` column is its ``name``. DeepSSH returns the fixed-codeword readout
                  of its semantic segment (``deepssh-readout``).

What the runner lends ``fit`` (never files) is a :class:`Context`. Deep methods are built on the public
base :mod:`hashbench.deep`.

Saving a fitted method
----------------------
The runner saves each cell's fitted method beside its artifact as tensors and plain data only
(:mod:`hashbench.state`; a results folder from someone else is read without running any code), and
``hashbench query`` restores it: the registered class is built again from ``get_params()``, then handed
the saved fitted state. Two optional hooks decide what that state is:

``fitted_state``       ``fitted_state() -> dict``: what ``fit`` learned, by attribute name. The default
                       is every instance attribute that is not a hyperparameter (``get_params``); its
                       values may be numbers, strings, ``None``, numpy arrays, torch tensors and lists,
                       tuples, sets and str-keyed dicts of them (plus a few hashbench value classes, see
                       :mod:`hashbench.state`). Anything else stops the save with one line naming the
                       attribute (the cell is kept, its method not saved).
``load_fitted_state``  ``load_fitted_state(state, context)``: the reverse, on a new instance built with
                       the same hyperparameters; the default sets each attribute. ``context`` is the
                       :class:`Context` of the restoring caller (backbone, cut, schema, device).

A method whose state is arrays and plain data needs neither; a deep method built on
:class:`hashbench.deep.DeepHashing` saves its network's ``state_dict()`` and rebuilds it with
:meth:`~hashbench.deep.DeepHashing.rebuild`, with no code of its own. Override the hooks for anything
else (say, a fitted object of another library: save its arrays, rebuild it in ``load_fitted_state``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .data import AttributeSchema
from .errors import HashbenchError

INPUTS = ("features", "maps", "attributes", "images", "ide")
SPLIT_INPUTS = ("features", "maps", "attributes", "images")  # the inputs a View carries, per split
NEEDS_MAPS = frozenset({"maps", "features", "ide"})  # the inputs made from the cached trunk maps
NEEDS_IDE = frozenset({"features", "ide"})  # the inputs made by the IDE stage


@dataclass
class View:
    """What a method sees of one split: its labels and the inputs the method declared."""

    split: str
    pids: np.ndarray
    camids: np.ndarray
    features: np.ndarray | None = None
    maps: np.ndarray | None = None
    attributes: np.ndarray | None = None
    images: Any = None

    def __len__(self) -> int:
        return len(self.pids)

    def require(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if value is None:
            raise HashbenchError(f"view of split {self.split!r} carries no {name!r}")
        return value

    def subset(self, index: np.ndarray) -> View:
        """The same view restricted to rows ``index`` (used for validation hold-outs)."""

        def take(a):
            return None if a is None else a[index]

        images = None if self.images is None else self.images.subset(index)
        return View(
            self.split,
            self.pids[index],
            self.camids[index],
            take(self.features),
            take(self.maps),
            take(self.attributes),
            images,
        )


@dataclass
class Context:
    """What the runner lends a method for training: never files, only resources and metadata.

    ``device``: the torch device to train on; ``schema``: the dataset's attribute schema (or ``None``);
    ``backbone``: the :class:`hashbench.backbones.Backbone`, for methods that consume ``"maps"`` or
    ``"images"``; ``cut``: the backbone cut the trunk maps were computed at (``None``: the backbone's
    default cut); ``finetune``: the run-level ``--finetune`` (``"top"`` or ``"full"``); ``progress``:
    whether a method may show progress bars; ``ide_top``: the IDE stage's trained top at ``cut`` as a
    ``state_dict()``, lent only to a method that consumes ``"ide"`` (else ``None``); ``extras``:
    anything else, by name.
    """

    device: str = "cpu"
    schema: AttributeSchema | None = None
    backbone: Any = None  # hashbench.backbones.Backbone, for methods that consume "maps"
    cut: str | None = None
    finetune: str = "top"
    progress: bool = False
    ide_top: dict | None = None
    extras: dict = field(default_factory=dict)


class HashMethod(ABC):
    """Base class of hashing methods. Subclasses list their hyperparameters in ``__init__``."""

    name: ClassVar[str]
    description: ClassVar[str]
    consumes: ClassVar[frozenset[str]] = frozenset({"features"})
    supervised: ClassVar[bool] = False
    # hyperparameters the runner fills from the run-level options of the same name when the user did not
    # set them (e.g. "finetune" of the deep methods); see the module docstring
    run_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, bits: int, seed: int = 0) -> None:
        self.bits = bits
        self.seed = seed

    @abstractmethod
    def fit(self, train: View, context: Context | None = None) -> HashMethod:
        """Learn the hash functions from the training split; returns ``self``."""

    @abstractmethod
    def encode(self, view: View) -> np.ndarray:
        """Binary codes of ``view``: (N, bits) uint8 in {0, 1}."""

    def code_layout(self, schema: AttributeSchema | None = None) -> dict[str, tuple[int, int]] | None:
        """Named bit ranges ``{name: (start, stop)}`` of a structured code, in bit order; ``None`` (the
        default) when the code has no named parts. A fitted method gives the layout it learned with;
        before ``fit``, the one it would use for ``schema`` if it can tell (else ``None``)."""
        return None

    def decoder(self, schema: AttributeSchema | None = None):
        """The method's own attribute decoder (:class:`hashbench.decoders.Decoder`) for its fitted codes,
        or ``None`` (the default: only the generic decoders read its codes)."""
        return None

    def fitted_state(self) -> dict[str, Any]:
        """What ``fit`` learned, by attribute name, to be saved as tensors and plain data (see the module
        docstring): by default every instance attribute that is not a hyperparameter."""
        params = self.get_params()
        return {k: v for k, v in vars(self).items() if k not in params}

    def load_fitted_state(self, state: dict[str, Any], context: Context) -> None:
        """Take back what :meth:`fitted_state` gave, on a new instance built from the same
        hyperparameters; by default each entry is set as an attribute. ``context``: the caller's."""
        for key, value in state.items():
            setattr(self, key, value)

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (hyperparameters), as in scikit-learn; they go into the config hash."""
        sig = inspect.signature(type(self).__init__)
        return {
            p: getattr(self, p)
            for p in sig.parameters
            if p != "self"
            and sig.parameters[p].kind
            not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def check_codes(codes: np.ndarray, n: int, bits: int, who: str) -> np.ndarray:
    """Validate a method's ``encode`` output and return it as uint8 0/1."""
    codes = np.asarray(codes)
    if codes.shape != (n, bits):
        raise HashbenchError(f"method {who!r} returned codes of shape {codes.shape}, expected {(n, bits)}")
    if codes.dtype == bool:
        return codes.astype(np.uint8)
    if not np.isin(codes, (0, 1)).all():
        raise HashbenchError(f"method {who!r} returned codes that are not 0/1")
    return codes.astype(np.uint8, copy=False)


def sign_to_bits(x: np.ndarray) -> np.ndarray:
    """Threshold real values at zero into {0, 1} codes (x > 0 -> 1)."""
    return (np.asarray(x) > 0).astype(np.uint8)
