"""A deep method's warm start from the IDE stage (``init="ide"``): the input it declares, what the
runner lends it, the key it records, and that hashes of ImageNet-started cells do not move."""

from __future__ import annotations

import json

import pytest
import torch

from hashbench.backbones.mobilenetv2 import MobileNetV2
from hashbench.deep import make_body
from hashbench.errors import HashbenchError
from hashbench.method import Context
from hashbench.runner import run
from hashbench_methods.dbh import DBH
from hashbench_methods.deepssh import DeepSSH

from .tiny import tiny_run_config

MAPS = frozenset({"maps"})


def test_init_is_a_hyperparameter_left_out_at_imagenet():
    plain = DBH(bits=64, init="imagenet")
    assert "init" not in plain.get_params() and plain.consumes == MAPS  # old cells keep their hashes
    warm = DBH(bits=64)  # the default start
    assert warm.init == "ide" and warm.get_params()["init"] == "ide"
    assert warm.consumes == MAPS | {"ide"} and DBH.consumes == MAPS  # the class attribute is untouched
    assert DeepSSH(bits=128, init="ide").consumes == {"maps", "attributes", "ide"}
    with pytest.raises(HashbenchError, match=r"dbh.init='imagenet1k': expected one of 'imagenet', 'ide'"):
        DBH(bits=64, init="imagenet1k")


def test_make_body_starts_from_the_lent_ide_top_or_says_what_is_missing():
    backbone = MobileNetV2(weights="none")
    donor = backbone.top(backbone.default_cut)
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(1.0)
    state = donor.state_dict()
    body, _, _ = make_body(Context(backbone=backbone, ide_top=state), "top", "ide")
    assert all(torch.equal(v, state[k]) for k, v in body.state_dict().items())
    fresh, _, _ = make_body(Context(backbone=backbone, ide_top=state), "top")  # imagenet: not lent
    assert not torch.equal(fresh.state_dict()[next(iter(state))], next(iter(state.values())))
    with pytest.raises(HashbenchError, match="must consume 'ide'"):
        make_body(Context(backbone=backbone), "top", "ide")
    with pytest.raises(HashbenchError, match="does not fit the top at cut 'block16'"):
        make_body(Context(backbone=backbone, cut="block16", ide_top=state), "top", "ide")


def test_the_pipeline_lends_the_ide_top_only_to_a_method_that_consumes_it(synthetic_bench):
    pipe = synthetic_bench.prepared
    pipe.load({"ide"})
    assert pipe.context().ide_top is None and pipe.context(MAPS).ide_top is None
    lent = pipe.context(MAPS | {"ide"}).ide_top
    trained = pipe.ide_model().top.state_dict()
    assert lent.keys() == trained.keys() and all(torch.equal(lent[k], trained[k].cpu()) for k in lent)
    assert pipe.view("train", MAPS | {"ide"}).maps is not None  # "ide" is no split input: skipped


def test_a_warm_start_beats_imagenet_after_the_same_short_training(synthetic_bench):
    """On the synthetic set two epochs from the adapted top already rank far better than two from
    ImageNet (the IDE stage has done the identity adaptation the ImageNet start still has to do)."""
    pipe = synthetic_bench.prepared
    pipe.load({"ide"})

    def fitted(init):
        method = DBH(bits=64, epochs=2, init=init)
        return method.fit(synthetic_bench.view("train", MAPS), pipe.context(method.consumes))

    cold, warm = synthetic_bench.score(fitted("imagenet")), synthetic_bench.score(fitted("ide"))
    assert warm > cold + 5.0, (warm, cold)


def test_the_runner_trains_the_ide_stage_for_a_warm_start_and_records_its_key(tmp_path):
    cfg = tiny_run_config(
        tmp_path,
        methods=["dbh"],
        bits=[16],
        reference=False,
        method_params={"dbh": {"epochs": 1, "init": "ide"}},
    )
    rows = run(cfg)
    assert len(rows) == 1
    (record,) = [json.loads(line) for line in (tmp_path / "res" / "configs.jsonl").read_text().splitlines()]
    assert record["config"]["params"]["init"] == "ide" and "ide" in record["consumes"]
    assert (tmp_path / "cache" / "ide" / record["keys"]["ide"]).is_dir()  # the stage it started from
    cold = tiny_run_config(
        tmp_path,
        methods=["dbh"],
        bits=[16],
        reference=False,
        method_params={"dbh": {"epochs": 1, "init": "imagenet"}},
    )
    assert len(run(cold)) == 1  # another cell: the start is part of its configuration
    records = [json.loads(line) for line in (tmp_path / "res" / "configs.jsonl").read_text().splitlines()]
    assert len({r["config_hash"] for r in records}) == 2 and "ide" not in records[1]["keys"]
