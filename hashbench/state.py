"""A fitted method as tensors and plain data: what ``cells/<stem>.method.pt`` holds, and nothing else.

A results folder may come from someone else, so reading one back must never execute code. A cell's
fitted method is therefore not pickled: :func:`method_state` turns it into a plain dict, written with
``torch.save``, and :func:`read_state` reads it with ``torch.load(..., weights_only=True)``, which
refuses any Python object beyond tensors and plain containers. :func:`restore_method` then builds the
method again from its *registered* class (looked up by name in the :class:`~hashbench.registry.Registry`,
never imported by a name read from the file) and its hyperparameters, and hands it its fitted state.

The saved dict::

    {"format": "hashbench.method/1",
     "method": <registered name>,
     "class": "module:Qualname",          # informational: where the class lived when it was saved
     "params": get_params(),              # JSON data: the constructor arguments
     "state": <encoded fitted state>}     # HashMethod.fitted_state(), encoded as below

The fitted state (:meth:`hashbench.method.HashMethod.fitted_state`: by default every instance attribute
that is not a hyperparameter) is encoded as a small allow-listed tree:

- ``None``, ``bool``, ``int``, ``float``, ``str``; ``list``, ``tuple`` and ``dict`` with ``str`` keys of
  those, as they are;
- ``set`` and ``frozenset``, numpy arrays (as a torch tensor, with their dtype and memory order: they come
  back as the same numpy array) and numpy scalars, as tagged dicts (the key :data:`TAG`);
- torch tensors, as they are (detached);
- the hashbench value classes of :data:`VALUE_CLASSES`: :class:`~hashbench.data.AttributeSchema` and
  :class:`~hashbench.data.AttributeGroup` (frozen dataclasses: their fields) and
  :class:`~hashbench.kernel.RBFAnchorMap` (its constructor arguments and fitted ``_`` attributes).

Anything else (an ``nn.Module``, a class of a plugin, a file handle) is a :class:`HashbenchError` naming
the attribute and its type: a deep method's network goes through
:meth:`hashbench.deep.DeepHashing.fitted_state` (its ``state_dict()``) and is rebuilt by
:meth:`~hashbench.deep.DeepHashing.rebuild`; a plugin holding other things overrides the two hooks
``fitted_state`` / ``load_fitted_state`` of :class:`~hashbench.method.HashMethod`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import pickle
import pickletools
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import AttributeGroup, AttributeSchema
from .errors import HashbenchError
from .kernel import RBFAnchorMap
from .method import Context, HashMethod

log = logging.getLogger(__name__)

FORMAT = "hashbench.method/1"
KEYS = ("format", "method", "class", "params", "state")
TAG = "__hashbench__"  # the key of a tagged node of the encoded tree
PRIMITIVES = (type(None), bool, int, float, str)


# -- value classes: a fixed allow-list, by name (the name in the file selects an entry, never an import) --
def _dataclass_codec(cls: type) -> tuple[type, Callable[[Any], dict], Callable[[dict], Any]]:
    """A frozen dataclass: its fields, and the class called with them."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls, lambda obj: {n: getattr(obj, n) for n in names}, lambda fields: cls(**fields)


def _estimator_codec(cls: type) -> tuple[type, Callable[[Any], dict], Callable[[dict], Any]]:
    """A scikit-learn style object: its constructor arguments (attributes of the same names), then the
    other attributes (what its ``fit`` learned) set on the new object."""
    sig = inspect.signature(cls.__init__)
    params = [p for p in sig.parameters if p != "self"]

    def fields(obj) -> dict:
        return {"params": {p: getattr(obj, p) for p in params}} | {
            "state": {k: v for k, v in vars(obj).items() if k not in params}
        }

    def build(fields: dict):
        obj = cls(**fields["params"])
        for k, v in fields["state"].items():
            setattr(obj, k, v)
        return obj

    return cls, fields, build


VALUE_CLASSES: dict[str, tuple[type, Callable[[Any], dict], Callable[[dict], Any]]] = {
    "AttributeSchema": _dataclass_codec(AttributeSchema),
    "AttributeGroup": _dataclass_codec(AttributeGroup),
    "RBFAnchorMap": _estimator_codec(RBFAnchorMap),
}
_BY_TYPE = {codec[0]: name for name, codec in VALUE_CLASSES.items()}


# -- encoding --------------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def encode(value: Any, where: str) -> Any:
    """``value`` as the allow-listed tree (see the module docstring); ``where`` names it in errors."""
    if type(value) in PRIMITIVES:
        return value
    if isinstance(value, np.generic):
        if value.dtype.kind not in "biufc":
            raise HashbenchError(
                f"{where} is a numpy {value.dtype} scalar, which a fitted-method file cannot hold "
                "(numbers and booleans only)"
            )
        return {
            TAG: "numpy scalar",
            "data": torch.from_numpy(np.asarray(value).copy()),
            "dtype": value.dtype.str,
        }
    if isinstance(value, np.ndarray):
        return _encode_array(value, where)
    if type(value) in (torch.Tensor, torch.nn.Parameter):
        return value.detach()
    if type(value) is list:
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value) is tuple:
        return tuple(encode(v, f"{where}[{i}]") for i, v in enumerate(value))
    if type(value) in (set, frozenset):
        items = sorted(value, key=repr)  # any order comes back as the same set; a stable file
        return {TAG: type(value).__name__, "items": [encode(v, f"{where}{{}}") for v in items]}
    if type(value) in (dict, OrderedDict):
        bad = [k for k in value if type(k) is not str]
        if bad:
            raise HashbenchError(
                f"{where} has a key {bad[0]!r} of type {_type_name(bad[0])}: keys must be str"
            )
        if TAG in value:
            raise HashbenchError(f"{where} has the key {TAG!r}, reserved by the fitted-method format")
        return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
    if type(value) in _BY_TYPE:
        name = _BY_TYPE[type(value)]
        return {TAG: "object", "class": name, "fields": encode(VALUE_CLASSES[name][1](value), where)}
    if isinstance(value, torch.nn.Module):
        hint = "a deep method built on hashbench.deep.DeepHashing saves its model_ by itself"
    else:
        hint = "tensors, numpy arrays, numbers, strings and lists, tuples, sets and str-keyed dicts of them"
    raise HashbenchError(
        f"{where} is a {_type_name(value)}, which a fitted-method file cannot hold ({hint}); "
        "override fitted_state() and load_fitted_state() of the method to save it"
    )


def _encode_array(a: np.ndarray, where: str) -> dict:
    if a.dtype.hasobject or a.dtype.kind not in "biufc":
        raise HashbenchError(
            f"{where} is a numpy array of dtype {a.dtype}, which a fitted-method file cannot hold "
            "(numbers and booleans only)"
        )
    # Fortran order is kept (its transpose stored C-contiguous): BLAS may round differently by layout
    fortran = a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous
    data = np.ascontiguousarray(a.T if fortran else a)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return {TAG: "ndarray", "data": torch.from_numpy(data.copy()), "dtype": a.dtype.str, "fortran": fortran}


# -- decoding --------------------------------------------------------------------------------------------
def decode(node: Any, where: str) -> Any:
    """The value an :func:`encode` tree stands for; a node of another shape is a :class:`HashbenchError`."""
    if type(node) in PRIMITIVES or isinstance(node, torch.Tensor):
        return node
    if type(node) is list:
        return [decode(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if type(node) is tuple:
        return tuple(decode(v, f"{where}[{i}]") for i, v in enumerate(node))
    if type(node) not in (dict, OrderedDict):
        raise HashbenchError(f"{where}: unexpected {_type_name(node)} in the fitted state")
    if TAG not in node:
        return {str(k): decode(v, f"{where}.{k}") for k, v in node.items()}
    kind = node[TAG]
    if kind == "ndarray":
        a = _tensor(node, where).numpy()
        dtype = _dtype(node, where)
        a = a.T if node.get("fortran") else a
        return np.array(a, dtype=dtype, order="F" if node.get("fortran") else "C")
    if kind == "numpy scalar":
        return np.asarray(_tensor(node, where).numpy(), dtype=_dtype(node, where))[()]
    if kind in ("set", "frozenset"):
        items = node.get("items")
        if type(items) is not list:
            raise HashbenchError(f"{where}: a {kind} without its items")
        values = [decode(v, f"{where}{{}}") for v in items]
        return set(values) if kind == "set" else frozenset(values)
    if kind == "object":
        name = _text(node, "class", where)
        if name not in VALUE_CLASSES:
            raise HashbenchError(
                f"{where}: value class {name!r} is not one this hashbench restores "
                f"(allowed: {', '.join(VALUE_CLASSES)})"
            )
        fields = decode(node.get("fields"), where)
        if type(fields) is not dict:
            raise HashbenchError(f"{where}: a {name} without its fields")
        return VALUE_CLASSES[name][2](fields)
    raise HashbenchError(f"{where}: unknown node {kind!r} in the fitted state")


def _tensor(node: dict, where: str) -> torch.Tensor:
    data = node.get("data")
    if not isinstance(data, torch.Tensor):
        raise HashbenchError(f"{where}: an array without its data")
    return data


def _dtype(node: dict, where: str) -> np.dtype:
    try:
        dtype = np.dtype(_text(node, "dtype", where))
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biufc":
        raise HashbenchError(f"{where}: an array of dtype {node.get('dtype')!r} (numbers and booleans only)")
    return dtype


def _text(node: dict, key: str, where: str) -> str:
    value = node.get(key)
    if type(value) is not str:
        raise HashbenchError(f"{where}: no {key!r} given")
    return value


# -- methods ---------------------------------------------------------------------------------------------
def check_params(params: dict, who: str) -> dict:
    """The hyperparameters as JSON data that reads back equal (what ``configs.jsonl`` records too)."""
    for key, value in params.items():
        try:
            same = json.loads(json.dumps(value, allow_nan=False)) == value
        except (TypeError, ValueError):
            same = False
        if not same:
            raise HashbenchError(
                f"{who}: hyperparameter {key}={value!r} ({_type_name(value)}) is not plain JSON data "
                "(numbers, strings, booleans, None, lists and str-keyed dicts of them)"
            )
    return params


def method_state(method: HashMethod) -> dict:
    """The fitted ``method`` as the plain dict of the fitted-method format (see the module docstring)."""
    klass = type(method)
    who = getattr(klass, "name", klass.__qualname__)
    params = check_params(dict(method.get_params()), who)
    state = method.fitted_state()
    if type(state) is not dict or any(type(k) is not str for k in state):
        raise HashbenchError(
            f"{who}: fitted_state() returned {_type_name(state)}, expected a dict with str keys"
        )
    return {
        "format": FORMAT,
        "method": who,
        "class": f"{klass.__module__}:{klass.__qualname__}",
        "params": params,
        "state": {k: encode(v, f"{who} attribute {k}") for k, v in state.items()},
    }


def restore_method(state: dict, registry, context: Context | None = None) -> HashMethod:
    """The method a :func:`method_state` dict stands for: its registered class (by name, from
    ``registry``), built with the saved hyperparameters, given the decoded fitted state and ``context``
    (what a deep method needs to rebuild its network: backbone, cut, schema, device)."""
    if type(state) is not dict or state.get("format") != FORMAT:
        found = state.get("format") if type(state) is dict else _type_name(state)
        raise HashbenchError(f"not a fitted method of format {FORMAT!r} (found {found!r})")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise HashbenchError(f"the saved dict has no {', '.join(missing)}")
    name, params, fitted = state["method"], state["params"], state["state"]
    if type(name) is not str or type(params) is not dict or type(fitted) is not dict:
        raise HashbenchError("its method, params or state is of the wrong type")
    try:
        klass = registry.method(name)
    except HashbenchError as exc:  # a plugin not installed here: say which method, and what is
        raise HashbenchError(f"method {name!r} is not installed here ({exc})") from None
    saved_as, here = state["class"], f"{klass.__module__}:{klass.__qualname__}"
    if saved_as != here:
        log.warning("fitted method %r was saved by %s; restored with %s", name, saved_as, here)
    try:
        method = klass(**params)
    except TypeError as exc:
        raise HashbenchError(f"its saved hyperparameters do not fit {here}: {exc}") from None
    decoded = {str(k): decode(v, f"{name} attribute {k}") for k, v in fitted.items()}
    method.load_fitted_state(decoded, context or Context())
    return method


# -- files -----------------------------------------------------------------------------------------------
def read_state(path: Path, refit: str) -> dict:
    """The plain dict of a fitted-method file, read with ``torch.load(..., weights_only=True)``: nothing
    in it is executed. A file holding other Python objects (a pickle payload, or a method pickled whole
    by an older hashbench) is refused with one line naming the file; ``refit`` says how to write it anew."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols it did not write
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a disallowed global; truncated or foreign files
        ops = _pickle_ops(path) if isinstance(exc, pickle.UnpicklingError) else None
        names = _globals(ops or [])
        if "Unsupported global" in str(exc) or any(m.split(".")[0] != "torch" for m, _ in names):
            if _pickled_method(ops or [], names):
                raise HashbenchError(
                    f"fitted method {path} was written by an older hashbench (a pickled Python object, "
                    f"which this version does not load: it could run code): refused; refit with {refit}"
                ) from None
            raise HashbenchError(
                f"fitted method {path} holds Python objects beyond tensors and plain data (a pickle "
                f"payload): refused, not executed; refit with {refit}"
            ) from None
        raise HashbenchError(
            f"fitted method {path} cannot be read ({_reason(exc)}); refit with {refit}"
        ) from None
    if type(state) is not dict or state.get("format") != FORMAT:
        raise HashbenchError(
            f"fitted method {path} is not a hashbench fitted-method file (format {FORMAT!r}); refit with {refit}"
        )
    return state


# modules whose globals a method pickled whole by an older hashbench refers to (the method's own module
# aside); anything else in a refused pickle (os, subprocess, builtins.eval, ...) makes it a payload
_PICKLED_METHOD_MODULES = ("hashbench", "hashbench_methods", "numpy", "torch", "torchvision", "collections")
_PICKLED_METHOD_GLOBALS = {
    "copyreg": {"_reconstructor"},
    "builtins": {"object", "set", "frozenset", "complex", "slice", "range", "bytearray"},
    "__builtin__": {"object", "set", "frozenset", "complex", "slice", "range", "bytearray"},  # protocol 2
    "_codecs": {"encode"},
}
_SYSTEM_MODULES = {
    "builtins",
    "__builtin__",
    "copyreg",
    "os",
    "posix",
    "nt",
    "sys",
    "subprocess",
    "shutil",
    "importlib",
}
_SYSTEM_MODULES |= {"pickle", "socket", "runpy", "code", "ctypes", "io", "pty", "webbrowser", "operator"}


def _reason(exc: Exception) -> str:
    """The gist of torch's (long, many-line) error: the unpickler's own error, else its first sentence."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line.split(". ")[0].rstrip(".") or type(exc).__name__


def _pickle_ops(path: Path) -> list[tuple[str, Any]] | None:
    """The opcodes of a file's (first) pickle, listed with :mod:`pickletools` (nothing run): the
    ``data.pkl`` of a torch zip file, else the file itself; ``None`` when they cannot be listed."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"))
        else:
            data = Path(path).read_bytes()
        return [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    except Exception:  # not a pickle that can be listed
        return None


def _pickled_method(ops: list[tuple[str, Any]], names: list[tuple[str, str]]) -> bool:
    """Whether a refused pickle looks like a method object pickled whole (the old format): its top
    object is an instance of the first class it names (``NEWOBJ``, as ``torch.save(method)`` writes
    it), and every other global it names is one a pickled method refers to. Only the wording of the
    refusal depends on it."""
    shape = [op for op, _ in ops if op not in ("PROTO", "FRAME", "BINPUT", "LONG_BINPUT", "MEMOIZE")][:3]
    if not names or shape != ["GLOBAL", "EMPTY_TUPLE", "NEWOBJ"]:
        return False
    own = names[0][0]  # the top object's class: the method's own module
    if own.split(".")[0] in _SYSTEM_MODULES:
        return False
    for module, attr in names:
        root = module.split(".")[0]
        if not (
            module == own
            or root in _PICKLED_METHOD_MODULES
            or attr in _PICKLED_METHOD_GLOBALS.get(module, ())
        ):
            return False
    return True


def _globals(ops: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(module, name) of every global a pickle's opcodes refer to, in order (GLOBAL and STACK_GLOBAL)."""
    out, strings = [], []
    for op, arg in ops:
        if op == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            out.append((module, name))
        elif op == "STACK_GLOBAL" and len(strings) >= 2:
            out.append((strings[-2], strings[-1]))
        elif isinstance(arg, str) and ("UNICODE" in op or op.endswith("STRING")):
            strings.append(arg)
    return out
