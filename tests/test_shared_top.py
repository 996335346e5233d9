"""Several code lengths from one trained top (``shared_top``, ``--shared-top``; hashbench.deep.SHARED_TOP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashbench import deep
from hashbench.deep import shared_lengths
from hashbench.errors import HashbenchError
from hashbench.registry import Registry
from hashbench.runner import run
from hashbench.state import method_state, restore_method
from hashbench_methods.dbh import DBH
from hashbench_methods.deepssh import DeepSSH
from hashbench_methods.hashnet import HashNet as HashNetMethod
from tests.tiny import csv_rows, tiny_run_config

MAPS = frozenset({"maps"})


def test_lengths_are_parsed_and_bad_ones_named():
    assert shared_lengths("", 64, "dbh") == ()
    assert shared_lengths("64,32", 64, "dbh") == (32, 64)
    assert shared_lengths("128-2048", 512, "dbh") == (128, 256, 512, 1024, 2048)
    assert shared_lengths([32, 64, 64], 32, "dbh") == (32, 64)
    for bad in ("32,64", "64", "12,64", "abc", "100-200"):
        with pytest.raises(HashbenchError, match=r"^dbh.shared_top=.*include this cell's 128") as err:
            shared_lengths(bad, 128, "dbh")
        assert "\n" not in str(err.value)


def test_off_keeps_the_configuration_on_is_recorded():
    assert "shared_top" not in DBH(bits=64).get_params()  # cells from before the option keep their hashes
    assert DBH(bits=64, shared_top="64, 32").get_params()["shared_top"] == "32,64"
    with pytest.raises(HashbenchError, match="dbh.shared_top"):
        DBH(bits=16, shared_top="32,64")


def _fit(klass, bits, bench, **kw):
    return klass(bits=bits, epochs=1, **kw).fit(bench.view("train", klass.consumes), bench.context())


def test_one_training_serves_every_length_in_either_order(synthetic_bench, monkeypatch):
    calls = []
    train = deep.DeepHashing._train
    monkeypatch.setattr(
        deep.DeepHashing, "_train", lambda self, m, *a: (calls.append(len(m)), train(self, m, *a))
    )
    deep._SHARED.clear()
    query = synthetic_bench.view("query", MAPS)
    a64 = _fit(DBH, 64, synthetic_bench, shared_top="32,64")
    a32 = _fit(DBH, 32, synthetic_bench, shared_top="32,64")
    assert calls == [2]  # the second length took its head from the first one's training
    assert a32.model_.body is a64.model_.body and a32.model_.head is not a64.model_.head
    codes32, codes64 = a32.encode(query), a64.encode(query)
    assert codes32.shape == (len(query), 32) and codes64.shape == (len(query), 64)
    assert a32.history_ == a64.history_ and {"loss_32", "loss_64"} <= set(a32.history_[0])

    deep._SHARED.clear()  # a resumed run that starts at the other length trains the same group
    b32 = _fit(DBH, 32, synthetic_bench, shared_top="32,64")
    assert calls == [2, 2]
    assert np.array_equal(b32.encode(query), codes32)
    alone = _fit(DBH, 64, synthetic_bench)  # without the option: a top of its own, other codes
    assert calls == [2, 2, 1] and not np.array_equal(alone.encode(query), codes64)


def test_changed_hyperparameters_train_a_new_group(synthetic_bench):
    deep._SHARED.clear()
    _fit(DBH, 32, synthetic_bench, shared_top="32,64")
    key = next(iter(deep._SHARED))
    other = DBH(bits=32, epochs=1, lr=0.02, shared_top="32,64")
    assert deep.shared_key(other, synthetic_bench.view("train", MAPS), synthetic_bench.context()) != key


def test_members_keep_their_own_state(synthetic_bench):
    deep._SHARED.clear()  # DeepSSH: each length its own semantic layout; HashNet: its own beta schedule
    s64 = _fit(DeepSSH, 64, synthetic_bench, shared_top="32,64")
    s32 = _fit(DeepSSH, 32, synthetic_bench, shared_top="32,64")
    assert s32.segments_ != s64.segments_
    assert s32.predict_attributes(s32.encode(synthetic_bench.view("query", MAPS))).shape[1] == len(
        s32.schema_
    )
    h = _fit(HashNetMethod, 64, synthetic_bench, shared_top="32,64")
    assert h.beta_ == pytest.approx(h.beta_end)


def test_a_member_saves_and_restores_alone(synthetic_bench):
    deep._SHARED.clear()
    method = _fit(DBH, 32, synthetic_bench, shared_top="32,64")
    state = json.loads(json.dumps(method_state(method)["params"]))
    assert state["shared_top"] == "32,64"
    restored = restore_method(method_state(method), Registry.load(), synthetic_bench.context())
    query = synthetic_bench.view("query", MAPS)
    assert np.array_equal(restored.encode(query), method.encode(query))
    n_weights = sum(t.numel() for t in restored.model_.state_dict().values() if torch.is_floating_point(t))
    assert n_weights < sum(t.numel() for t in method.model_.state_dict().values()) + 1  # its own head only


def test_run_option_sets_the_lengths_and_rows_say_so(tmp_path):
    deep._SHARED.clear()
    config = tiny_run_config(
        tmp_path, methods=["dbh"], bits=[16, 32], shared_top=True, method_params={"dbh": {"epochs": 1}}
    )
    run(config)
    rows = csv_rows(config.out)
    assert [r["bits"] for r in rows if r["method"] == "dbh"] == ["16", "32"]
    records = [json.loads(line) for line in (config.out / "configs.jsonl").read_text().splitlines()]
    assert {r["config"]["params"]["shared_top"] for r in records if r.get("method") == "dbh"} == {"16,32"}
    first, second = (float(r["train_s"]) for r in rows if r["method"] == "dbh")
    assert first > 10 * second  # the first cell trained the top, the second took its head
    # the tables say so beside the numbers
    from hashbench.report import write_report

    write_report(config.out)
    for name in ("table_map.md", "table_rank1.md", "table_cost.md"):
        assert "*Shared top*: dbh (16,32 bits)" in (config.out / name).read_text(), name
    note = [line for line in (config.out / "table_map.md").read_text().splitlines() if "Shared top" in line]
    assert len(note) == 1 and "ide-float" not in note[0]  # the reference row trains no top


def test_the_runner_shares_deepssh_top_by_default_and_no_other(tmp_path):
    from hashbench.cli import build_parser
    from hashbench.pipeline import make_method

    def shared(klass, bits=(16, 32), **kw):
        config = tiny_run_config(tmp_path, methods=[klass.name], bits=list(bits), **kw)
        return make_method(klass, bits[0], config).get_params().get("shared_top", "")

    assert DeepSSH.shared_top_default and not DBH.shared_top_default
    assert shared(DeepSSH) == "16,32" and shared(DBH) == ""  # the default: DeepSSH's choice only
    assert shared(DeepSSH, bits=(32,)) == ""  # one length: nothing to share
    assert shared(DeepSSH, shared_top=False) == "" and shared(DBH, shared_top=True) == "16,32"
    assert shared(DeepSSH, method_params={"deepssh": {"shared_top": ""}}) == ""  # a --param wins
    assert DeepSSH(bits=32).get_params().get("shared_top") is None  # one constructed cell: off

    parser = build_parser()
    base = ["run", "--methods", "deepssh"]
    assert parser.parse_args(base).shared_top is None
    assert parser.parse_args(base + ["--shared-top"]).shared_top is True
    assert parser.parse_args(base + ["--no-shared-top"]).shared_top is False
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--shared-top", "--no-shared-top"])
