"""What a damaged line of a results file is, and what the store does with it: left out and reported
once (one warning naming the file and line), its cell recomputed, every good row kept as written."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from hashbench.cli import main
from hashbench.results import ResultRow, ResultStore, read_results
from hashbench.runner import run

from ..tiny import tiny_run_config

HEADER = "dataset,method,bits,map,rank1,config_hash,commit,seed,date,artifact\n"
GOOD = "market1501,lsh,128,30.0,50.0,aaa,c,0,2026-11-02,cells/a.npz\n"
ONE = dict(methods=["lsh", "itq"], bits=[16], reference=False, attribute_queries=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module's runs (built by the first)."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("market1501,lsh,128,30.0,50.0,bbb,c,0,2026-11", "half-written (no line end)"),
        ("market1501,lsh,128,30.0,50.0,bbb,c,0,2026,a.npz,extra\n", "11 fields, expected 10"),
        ("market1501,lsh,128,30.0\n", "4 fields, expected 10"),
        ('market1501,lsh,128,30.0,50.0,bbb,c,0,"2026,a.npz\n', "not a CSV record"),
        ("market1501,lsh,128,high,50.0,bbb,c,0,2026,a.npz\n", "map 'high' is not a number"),
        ("market1501,lsh,many,30.0,50.0,bbb,c,0,2026,a.npz\n", "bits 'many' is not a positive integer"),
        ("market1501,lsh,0,30.0,50.0,bbb,c,0,2026,a.npz\n", "bits '0' is not a positive integer"),
        ("market1501,lsh,12.5,30.0,50.0,bbb,c,0,2026,a.npz\n", "bits '12.5' is not a positive integer"),
        ("market1501,,128,30.0,50.0,bbb,c,0,2026,a.npz\n", "empty method"),
        ("market1501,l\xe9sh,128,30.0,50.0,bbb,c,0,2026,a.npz\n".encode("latin-1"), "not UTF-8 text"),
    ],
)  # fmt: skip
def test_each_kind_of_damage_is_left_out_and_named(tmp_path, caplog, line, reason):
    raw = line if isinstance(line, bytes) else line.encode()
    tail = b"" if raw.endswith(b"\n") is False else GOOD.encode()  # a half-written line is the last
    (tmp_path / "results.csv").write_bytes(HEADER.encode() + GOOD.encode() + raw + tail)
    with caplog.at_level(logging.WARNING):
        table = read_results(tmp_path, required=())
    assert [(d.line, reason in d.reason) for d in table.damaged] == [(3, True)]
    assert [r.config_hash for r in table.rows] == ["aaa"] * (1 + bool(tail))
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(tmp_path / "results.csv") in message and "line 3" in message and "\n" not in message


def test_damage_is_reported_once_and_the_next_append_keeps_every_good_row(tmp_path, caplog):
    lines = [
        "market1501,lsh,128,30.0,50.0,aaa,c,0,2026-11-02,cells/a.npz\n",
        "hello, world\n",
        'market1501,itq,128,31.0,51.0,bbb,c,0,2026-11-02,"cells/b.npz"\n',
    ]
    (tmp_path / "results.csv").write_text(HEADER + "".join(lines))
    store = ResultStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert [r.method for r in store.rows()] == ["lsh", "itq"]
    assert len(caplog.records) == 1 and "line 3 (2 fields, expected 10)" in caplog.records[0].getMessage()
    row = ResultRow(**{f: 0 for f in ResultRow.columns()} | dict(dataset="market1501", method="dbh", bits=64))
    row = ResultRow(**{**row.__dict__, "config_hash": "ccc", "date": "2026", "artifact": "", "version": "x"})
    assert store.append(row, np.linspace(0, 1, 50)) and not store.append(row, np.linspace(0, 1, 50))
    text = (tmp_path / "results.csv").read_text()
    assert "hello" not in text  # (the older header is extended: the kept rows keep every value)
    kept = [(r.method, r.values["map"], r.config_hash, r.artifact) for r in store.rows()]
    assert kept == [
        ("lsh", "30.0", "aaa", "cells/a.npz"),
        ("itq", "31.0", "bbb", "cells/b.npz"),
        ("dbh", "0", "ccc", ""),
    ]


def test_a_half_written_last_row_is_recomputed_and_nothing_else_changes(tmp_path, cache):
    config = tiny_run_config(tmp_path, **ONE, cache_dir=cache)
    assert len(run(config)) == 2
    path = config.out / "results.csv"
    before = read_results(path, required=()).rows
    data = path.read_bytes()
    last_start = data.rindex(b"\n", 0, len(data) - 1) + 1
    path.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # killed mid-write
    again = run(config)
    assert [(r.method, r.bits) for r in again] == [(before[1].method, before[1].bits)]
    after = read_results(path, required=())
    assert after.damaged == () and len(after.rows) == 2
    for old, new in zip(before, after.rows, strict=True):
        assert old.metrics == new.metrics and old.key == new.key and old.artifact == new.artifact


def test_a_foreign_line_in_the_middle_is_reported_once_and_the_other_rows_kept(tmp_path, caplog, cache):
    config = tiny_run_config(tmp_path, **ONE, cache_dir=cache)
    run(config)
    path = config.out / "results.csv"
    head, first, second = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(head + first + b"# edited by hand\n" + second)
    with caplog.at_level(logging.WARNING, logger="hashbench"):
        assert run(config) == []  # both cells still finished
        rows = run(
            tiny_run_config(tmp_path, **{**ONE, "bits": [16, 32]}, cache_dir=cache)
        )  # appends: the file is rewritten
    assert len(rows) == 2
    damage = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damage) == 2 and all("line 3" in m for m in damage)  # once per run
    assert path.read_bytes().startswith(head + first + second) and b"edited" not in path.read_bytes()


def test_random_bytes_as_results_csv_are_a_one_line_error_naming_the_file(tmp_path, capsys, cache):
    (tmp_path / "res").mkdir()
    bad = tmp_path / "res" / "results.csv"
    bad.write_bytes(random.Random(0).randbytes(4096))
    for argv in (
        ["report", str(tmp_path / "res")],
        ["leaderboard", str(tmp_path), "--out", str(tmp_path / "lb.md")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    assert main(["run", "--methods", "lsh", "--bits", "16", "--no-reference", "--out", str(tmp_path / "res"),
                 "--input-size", "64x32", "--cache-dir", str(cache), "--device", "cpu",
                 "--dataset-option", "n_train_ids=16", "--dataset-option", "n_test_ids=16"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err


def test_damaged_lines_of_cmc_and_attribute_query_files_are_left_out_once_and_the_report_made(
    tmp_path, caplog, cache
):
    config = tiny_run_config(tmp_path, methods=["lsh"], bits=[16], reference=False, cache_dir=cache)
    run(config)
    for name, junk in (("cmc.csv", b"synthetic,lsh,16,\xff\xfe,0.5\n"), ("attribute_queries.csv", b"x,y\n")):
        path = config.out / name
        head, *rest = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(head + junk + b"".join(rest) + b"synthetic,lsh,16,0.1")  # and a half-written end
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hashbench"):
        assert main(["report", str(config.out), "--out", str(tmp_path / "rep"), "--cmc-bits", "16"]) == 0
    damage = sorted(r.getMessage() for r in caplog.records if "damaged line" in r.getMessage())
    assert len(damage) == 2, damage
    assert str(config.out / "attribute_queries.csv") in damage[0] and "2 damaged line(s)" in damage[0]
    assert str(config.out / "cmc.csv") in damage[1] and "line 2 (not UTF-8 text)" in damage[1]
    assert (tmp_path / "rep" / "cmc_16.png").is_file()


@pytest.mark.parametrize("artifact", ["../outside.npz", "/etc/passwd", "cells/../../outside.npz"])
def test_an_artifact_path_leading_out_of_the_results_folder_is_refused(tmp_path, capsys, cache, artifact):
    config = tiny_run_config(tmp_path, methods=["lsh"], bits=[16], reference=False, cache_dir=cache)
    run(config)
    np.savez(tmp_path / "outside.npz", cmc=np.ones(50))
    path = config.out / "results.csv"
    text = path.read_text()
    (row,) = read_results(path, required=()).rows
    path.write_text(text.replace(row.artifact, artifact))
    (config.out / "cmc.csv").unlink()  # so that the report reads the artifact
    report = ["report", str(config.out), "--out", str(tmp_path / "rep"), "--cmc-bits", "16"]
    for argv in (report, ["explain", str(config.out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "outside the results folder" in err and "Traceback" not in err
