"""Fitted methods saved as tensors and plain data (hashbench.state): every built-in method and a third-party
deep plugin restore to bit-identical codes; pickle payloads and the old pickled format are refused
without running anything; a method holding something else keeps its cell, unsaved."""

import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hashbench.cells import load_cell
from hashbench.cli import main
from hashbench.data import AttributeGroup, AttributeSchema
from hashbench.errors import HashbenchError
from hashbench.hookspecs import hookimpl
from hashbench.kernel import RBFAnchorMap
from hashbench.method import HashMethod, sign_to_bits
from hashbench.pipeline import Pipeline
from hashbench.registry import Registry
from hashbench.results import ResultStore
from hashbench.runner import run
from hashbench.state import FORMAT, TAG, decode, encode, method_state, read_state, restore_method

from .deep_plugin_fixture import install_tinydeep_plugin
from .tiny import OPTIONS, TINY, tiny_run_config

BUILTINS = ["lsh", "itq", "ksh", "sdh", "dbh", "pdh", "deepssh"]
FAST = {"itq": {"n_iter": 5}, "dbh": {"epochs": 1}, "pdh": {"epochs": 1}, "deepssh": {"epochs": 1}}
SPLITS = ("train", "query", "gallery")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Every built-in method at 32 bits (DeepSSH's 12 attribute groups need that many) on the tiny set."""
    tmp = tmp_path_factory.mktemp("state")
    config = tiny_run_config(tmp, methods=BUILTINS, bits=[32], method_params=FAST, reference=False)
    rows = run(config)
    assert sorted(r.method for r in rows) == sorted(BUILTINS)
    pipe = Pipeline.setup(config)
    pipe.load(set().union(*(pipe.method(m, 32).consumes for m in BUILTINS)))
    return tmp, pipe


def restored_codes(pipe, method):
    return {s: method.encode(pipe.view(s, method.consumes)) for s in SPLITS}


# -------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_method_restores_to_the_same_codes(finished, name):
    tmp, pipe = finished
    cell = load_cell(tmp / "res", name, 32)
    state = torch.load(cell.method_path, weights_only=True)  # plain data: loads with weights_only
    assert state["format"] == FORMAT and state["method"] == name and state["params"]["bits"] == 32
    assert "_progress" not in state["state"]
    method = cell.fitted_method(pipe.context(), required=True, registry=pipe.registry)
    assert type(method).name == name and method.get_params() == state["params"]
    for split, codes in restored_codes(pipe, method).items():
        assert np.array_equal(codes, cell.codes(split)), split  # the codes the run wrote, bit for bit


def test_deepssh_decoder_and_description_codes_work_after_restoring(finished):
    tmp, pipe = finished
    cell = load_cell(tmp / "res", "deepssh", 32)
    method = cell.fitted_method(pipe.context(), registry=pipe.registry)
    assert method.schema_ == pipe.context().schema and method.code_layout() == method.segments_
    predicted = method.predict_attributes(cell.codes("gallery"))
    assert predicted.shape == (len(cell.codes("gallery")), 12)
    code, mask = method.attribute_code("gender=female,upper_color=red")
    assert code.shape == mask.shape == (32,) and 0 < mask.sum() < 32
    # the same as the method the run fitted: refit in-process (same seed) and compare
    original = pipe.method("deepssh", 32).fit(
        pipe.view("train", method.consumes), pipe.context(method.consumes)
    )
    assert np.array_equal(original.predict_attributes(cell.codes("gallery")), predicted)
    want, got = original.attribute_code("gender=female"), method.attribute_code("gender=female")
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    # explain reads the artifact (query by photo reads the restored method: the next test)
    assert main(["explain", str(tmp / "res"), "--methods", "deepssh"]) == 0


def test_query_by_photo_with_a_restored_deep_method_gives_the_runs_code(finished):
    from hashbench.query import run_query

    tmp, _ = finished
    cell = load_cell(tmp / "res", "deepssh", 32)
    dataset = Registry.load().dataset("synthetic")(None, **TINY)
    record = dataset.splits()["query"][3]
    photo = tmp / "photo.png"
    next(dataset.open_images([record])).save(photo)
    result = run_query(
        "synthetic", "deepssh", 32, image=photo, attributes="gender=female", results_dir=tmp / "res",
        out=tmp / "hits.png", dataset_options=TINY, cache_dir=tmp / "cache",
    )  # fmt: skip
    assert np.array_equal(result.query_code, cell.codes("query")[3])


def test_a_third_party_deep_plugin_saves_and_restores_with_no_code_of_its_own(
    finished, tmp_path, monkeypatch
):
    cache = finished[0] / "cache"  # the trunk maps of the tiny set, computed once
    site = tmp_path / "site"
    site.mkdir()
    install_tinydeep_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    registry = Registry.load()
    config = tiny_run_config(
        tmp_path,
        methods=["tinydeep"],
        bits=[32],
        method_params={"tinydeep": {"epochs": 1}},
        reference=False,
        cache_dir=cache,
    )
    run(config, registry)
    cell = load_cell(tmp_path / "res", "tinydeep", 32)
    pipe = Pipeline.setup(config, registry)
    pipe.load({"maps"})
    method = cell.fitted_method(pipe.context(), registry=registry)
    assert method.n_ids_ == len(np.unique(pipe.splits.arrays["train"].pids))
    for split, codes in restored_codes(pipe, method).items():
        assert np.array_equal(codes, cell.codes(split)), split
    # a deep method needs the backbone to rebuild its network: one line saying so
    cell = load_cell(tmp_path / "res", "tinydeep", 32)
    with pytest.raises(
        HashbenchError, match=r"tinydeep-32-\w+\.method\.pt cannot be restored.*backbone"
    ) as err:
        cell.fitted_method(registry=registry)
    assert "\n" not in str(err.value)


def test_a_deep_method_trained_from_pixels_restores_its_whole_network(finished, tmp_path):
    from hashbench.features import ImageSource
    from hashbench.method import View
    from hashbench_methods.dbh import DBH

    _, pipe = finished
    arrays = pipe.splits.arrays["train"]
    index = np.concatenate([np.flatnonzero(arrays.pids == p)[:2] for p in np.unique(arrays.pids)[:2]])
    images = ImageSource(pipe.dataset, [pipe.splits.records["train"][i] for i in index], pipe.input_size)
    view = View("train", arrays.pids[index], arrays.camids[index], images=images)
    method = DBH(bits=16, epochs=1, batch_size=4, finetune="full", init="imagenet").fit(view, pipe.context())
    torch.save(method_state(method), tmp_path / "m.pt")
    restored = restore_method(read_state(tmp_path / "m.pt", "x"), pipe.registry, pipe.context())
    assert restored.consumes == frozenset({"images"}) and restored.history_ == method.history_
    assert np.array_equal(restored.encode(view), method.encode(view))


# ----------------------------------------------------------------------------- plugins of plain data


class PlainPlug(HashMethod):
    """Arrays, numbers and a tuple: saved and restored with no code of its own."""

    name = "plainplug"
    description = "test: sign of a random projection"

    def fit(self, train, context=None):
        x = train.require("features")
        self.mean_ = x.mean(0)
        self.w_ = np.asfortranarray(np.random.default_rng(self.seed).standard_normal((x.shape[1], self.bits)))
        self.info_ = {"n": len(x), "shape": x.shape, "scale": np.float32(1.5)}
        return self

    def encode(self, view):
        return sign_to_bits((view.require("features") - self.mean_) @ self.w_)


class OddPlug(PlainPlug):
    """Holds a generator object: its method cannot be saved, its cell is kept."""

    name = "oddplug"

    def fit(self, train, context=None):
        super().fit(train, context)
        self.rng_ = np.random.default_rng(0)
        return self


class Plugins:
    @hookimpl
    def hashbench_register_methods(self):
        return [PlainPlug, OddPlug]


def test_a_plain_plugin_round_trips_and_an_unsupported_attribute_keeps_the_cell(finished, tmp_path, caplog):
    registry = Registry.load(extra_plugins=(Plugins(),))
    config = tiny_run_config(
        tmp_path,
        methods=["plainplug", "oddplug"],
        bits=[16],
        reference=False,
        cache_dir=finished[0] / "cache",
    )
    rows = run(config, registry)
    assert sorted(r.method for r in rows) == ["oddplug", "plainplug"]  # both cells recorded
    warned = [r.getMessage() for r in caplog.records if "fitted method not saved" in r.getMessage()]
    assert len(warned) == 1 and "oddplug attribute rng_" in warned[0] and "Generator" in warned[0]
    odd = load_cell(tmp_path / "res", "oddplug", 16)
    assert not odd.method_path.exists() and odd.fitted_method() is None

    cell = load_cell(tmp_path / "res", "plainplug", 16)
    method = cell.fitted_method(registry=registry)
    n_train = len(cell.codes("train"))
    assert method.w_.flags.f_contiguous and method.info_["shape"] == (n_train, len(method.mean_))
    assert method.info_["n"] == n_train and type(method.info_["scale"]) is np.float32
    pipe = Pipeline.setup(config, registry)
    pipe.load({"features"})
    for split, codes in restored_codes(pipe, method).items():
        assert np.array_equal(codes, cell.codes(split)), split


# -------------------------------------------------------------------------------------- the encoding


def test_the_encoding_keeps_types_dtypes_and_memory_order():
    schema = AttributeSchema((AttributeGroup("gender", ("male", "female"), ("gender",)),))
    kernel = RBFAnchorMap(4, sigma="nearest")
    kernel.anchors_, kernel.sigma_ = np.arange(8.0).reshape(4, 2), 0.5
    value = {
        "a": np.arange(6, dtype=np.int16).reshape(2, 3),
        "f": np.asfortranarray(np.ones((3, 2), dtype=np.float32)),
        "big": np.arange(3, dtype=">f8"),
        "s": np.float64(2.5),
        "b": np.bool_(True),
        "t": (1, 2.0, "x", None, [True]),
        "sets": [{1, 2}, frozenset({"maps"})],
        "tensor": torch.arange(3),
        "schema": schema,
        "kernel": kernel,
    }
    back = decode(encode(value, "v"), "v")
    for key in ("a", "f", "big"):
        assert back[key].dtype == value[key].dtype and np.array_equal(back[key], value[key])
    assert back["f"].flags.f_contiguous and not back["f"].flags.c_contiguous
    assert type(back["s"]) is np.float64 and type(back["b"]) is np.bool_
    assert back["t"] == value["t"] and back["sets"] == value["sets"] and type(back["sets"][1]) is frozenset
    assert torch.equal(back["tensor"], value["tensor"]) and back["schema"] == schema
    assert back["kernel"].sigma == "nearest" and back["kernel"].sigma_ == 0.5
    assert np.array_equal(back["kernel"].anchors_, kernel.anchors_)


def test_the_decoder_restores_only_the_value_classes_it_lists():
    node = {TAG: "object", "class": "os.system", "fields": {}}
    with pytest.raises(HashbenchError, match="'os.system' is not one this hashbench restores"):
        decode(node, "x")
    array = {TAG: "ndarray", "data": torch.zeros(2), "dtype": "O", "fortran": False}
    with pytest.raises(HashbenchError, match="dtype 'O'"):
        decode(array, "x")


@pytest.mark.parametrize(
    ("value", "named"),
    [(object(), "object"), (torch.nn.Linear(2, 2), "DeepHashing"), (np.array(["a"]), "dtype <U1"),
     ({1: 2}, "keys must be str")],
)  # fmt: skip
def test_what_the_format_cannot_hold_is_named(value, named):
    with pytest.raises(HashbenchError, match=named) as err:
        encode({"ok": 1, "bad_": value}, "m attribute thing_")
    assert "m attribute thing_.bad_" in str(err.value)


def test_hyperparameters_must_be_json_data():
    method = PlainPlug(bits=8, seed=np.int64(3))
    with pytest.raises(HashbenchError, match="hyperparameter seed="):
        method_state(method)


# ---------------------------------------------------------------------------------- refused files


@pytest.fixture
def copied(finished, tmp_path):
    """A copy of the finished results, to plant files in."""
    tmp, _ = finished
    shutil.copytree(tmp / "res", tmp_path / "res")
    return tmp_path / "res"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_a_pickle_payload_is_refused_and_not_executed(finished, copied, tmp_path, capsys):
    marker = tmp_path / "ran"
    cell = load_cell(copied, "lsh", 32)
    planted = {"format": FORMAT, "method": "lsh", "class": "x:y", "params": {"bits": 32, "seed": 0}}
    torch.save({**planted, "state": {"mean_": Payload(marker)}}, cell.method_path)
    with pytest.raises(HashbenchError) as err:
        cell.fitted_method(required=True)
    message = str(err.value)
    assert "\n" not in message and str(cell.method_path) in message
    assert "(a pickle payload): refused, not executed; refit with `hashbench run" in message
    assert "after removing its row" in message
    assert not marker.exists()
    # through the CLI: exit 2, one line, nothing run
    photo = tmp_path / "photo.png"
    dataset = Registry.load().dataset("synthetic")(None, **TINY)
    next(dataset.open_images(dataset.splits()["query"][:1])).save(photo)
    code = main(["query", *OPTIONS, "--method", "lsh", "--bits", "32", "--results", str(copied),
                 "--cache-dir", str(finished[0] / "cache"), "--image", str(photo)])  # fmt: skip
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "pickle payload" in err_lines[-1] and not marker.exists()
    # the control: the payload is live (a plain torch.load runs it)
    torch.load(cell.method_path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["lsh", "dbh"])
def test_a_method_pickled_whole_by_an_older_hashbench_is_refused(finished, copied, name):
    tmp, pipe = finished
    method = load_cell(tmp / "res", name, 32).fitted_method(pipe.context(), registry=pipe.registry)
    cell = load_cell(copied, name, 32)
    torch.save(method, cell.method_path)  # the old format
    with pytest.raises(HashbenchError) as err:
        cell.fitted_method(pipe.context(), registry=pipe.registry)
    message = str(err.value)
    assert "\n" not in message and str(cell.method_path) in message
    assert "written by an older hashbench" in message and "refit with `hashbench run" in message


def test_other_unreadable_files_are_one_line(copied):
    cell = load_cell(copied, "lsh", 32)
    cell.method_path.write_bytes(b"not a torch file")
    with pytest.raises(HashbenchError, match="cannot be read") as err:
        cell.fitted_method()
    assert "\n" not in str(err.value)
    torch.save({"format": "something/9"}, cell.method_path)
    with pytest.raises(HashbenchError, match="not a hashbench fitted-method file"):
        read_state(cell.method_path, "x")
    state = torch.load(load_cell(copied, "itq", 32).method_path, weights_only=True)
    with pytest.raises(HashbenchError, match="method 'nosuch' is not installed here"):
        restore_method({**state, "method": "nosuch"}, Registry.load())


def test_saving_goes_through_the_store_atomically(tmp_path):
    method = PlainPlug(bits=8)
    method.mean_ = np.zeros(3)
    store = ResultStore(tmp_path)
    path = store.save_method(tmp_path / "cells" / "plainplug-8-abc.npz", method)
    assert path.name == "plainplug-8-abc.method.pt" and sorted(p.name for p in path.parent.iterdir()) == [
        path.name
    ]
    assert read_state(path, "x")["state"]["mean_"][TAG] == "ndarray"
