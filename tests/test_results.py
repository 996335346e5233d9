"""Tests of the results reader (hashbench.results.read_results) and its one "latest row" rule, which the
report, the cell reader (hashbench explain / query) and the store all follow."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashbench.cells import hash_rows, load_cell, read_rows
from hashbench.errors import HashbenchError
from hashbench.report import load_results, paper_tables, select_latest
from hashbench.results import ResultStore, cpu_model, device_name, latest_rows, read_results

HEADER = "dataset,method,bits,map,rank1,config_hash,commit,seed,date,artifact\n"


def write_results(root: Path, rows: list[str], header: str = HEADER) -> Path:
    """``root/results.csv`` with ``rows``; an .npz beside it for every artifact named."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.csv").write_text(header + "".join(r + "\n" for r in rows))
    for r in rows:
        art = r.rsplit(",", 1)[-1]
        if art.endswith(".npz"):
            (root / art).parent.mkdir(parents=True, exist_ok=True)
            np.savez(root / art, cmc=np.linspace(0.3, 1.0, 50), ap=np.zeros(3))
    return root


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------ latest


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    """DBH@128 twice, the newer run *first* in the file; lsh@128 twice on the same date (a tie)."""
    return write_results(
        tmp_path / "res",
        [
            "market1501,DBH,128,30.0,50.0,new,aaa,0,2026-11-02T10:00:00+00:00,cells/DBH-128-new.npz",
            "market1501,lsh,128,15.0,36.0,first,aaa,0,2026-11-01T00:00:00+00:00,cells/lsh-128-first.npz",
            "market1501,DBH,128,10.0,20.0,old,aaa,0,2026-11-01T09:00:00+00:00,cells/DBH-128-old.npz",
            "market1501,lsh,128,16.0,37.0,second,aaa,0,2026-11-01T00:00:00+00:00,cells/lsh-128-second.npz",
            "market1501,itq,128,20.0,40.0,dated,aaa,0,2026-11-01T00:00:00+00:00,cells/itq-128-dated.npz",
            "market1501,itq,128,21.0,41.0,undated,aaa,0,not a date,cells/itq-128-undated.npz",
            "market1501,ide-float,,40.0,60.0,ref,aaa,0,2026-11-01T00:00:00+00:00,cells/ide-float-ref.npz",
        ],
    )


# the latest by date; a tie of dates: the later row; an unparseable date counts as the earliest
EXPECTED = {("DBH", 128): "new", ("lsh", 128): "second", ("itq", 128): "dated", ("ide-float", None): "ref"}


def test_reader_report_and_load_cell_agree_on_the_latest_row(two_runs: Path) -> None:
    table = read_results(two_runs)
    assert {(r.method, r.bits): r.config_hash for r in table.latest()} == EXPECTED
    assert {(r.method, r.bits): r.config_hash for r in latest_rows(table.rows)} == EXPECTED

    latest = select_latest(load_results(two_runs))
    got = {
        (r["method"], None if pd.isna(r["bits"]) else int(r["bits"])): r["config_hash"]
        for _, r in latest.iterrows()
    }
    assert got == EXPECTED
    maps = paper_tables(load_results(two_runs))
    assert maps.at["DBH", 128] == 30.0 and maps.at["lsh", 128] == 16.0 and maps.at["itq", 128] == 20.0

    cells = hash_rows(read_rows(two_runs))
    assert {k: r.config_hash for k, r in cells.items()} == {k: v for k, v in EXPECTED.items() if k[1]}
    assert list(cells) == [("DBH", 128), ("lsh", 128), ("itq", 128)]  # the order cells first appear in
    for (method, bits), chash in EXPECTED.items():
        if bits is None:
            continue
        cell = load_cell(two_runs, method, bits)
        assert cell.row["config_hash"] == chash
        assert cell.path == two_runs / "cells" / f"{method}-{bits}-{chash}.npz"


def test_latest_rows_come_in_date_then_file_order(two_runs: Path) -> None:
    table = read_results(two_runs)
    order = ["second", "dated", "ref", "new"]  # 2026-11-01 in file order, then 2026-11-02
    assert [r.config_hash for r in table.latest()] == order
    assert list(select_latest(table.frame)["config_hash"]) == order


# ------------------------------------------------------------------------------------------- typed


def test_rows_are_typed_and_keep_the_text_as_written(two_runs: Path) -> None:
    table = read_results(two_runs / "results.csv")
    assert table.path == two_runs / "results.csv"
    assert table.columns == tuple(HEADER.strip().split(","))
    first, ref = table.rows[0], table.rows[-1]
    assert (first.position, first.dataset, first.method, first.bits) == (0, "market1501", "DBH", 128)
    assert first.metrics == {"map": 30.0, "rank1": 50.0} and isinstance(first.metrics["map"], float)
    assert first.values["seed"] == "0" and first.values["bits"] == "128"
    assert first.key == ("market1501", "DBH", 128, "new")
    assert ref.bits is None and ref.values["bits"] == ""
    assert str(table.frame["bits"].dtype) == "Int64" and len(table.frame) == len(table.rows) == 7


def test_a_cell_file_needs_only_its_key_columns(tmp_path: Path) -> None:
    root = write_results(
        tmp_path, ["toy,toy,8,abc,cells/toy-8-abc.npz"], "dataset,method,bits,config_hash,artifact\n"
    )
    with pytest.raises(HashbenchError, match="missing required column"):
        read_results(root)  # the report's columns
    [row] = read_rows(root)
    assert (row.method, row.bits, row.date, row.metrics) == ("toy", 8, "", {})
    assert load_cell(root, "toy", 8).row["artifact"] == "cells/toy-8-abc.npz"


def test_store_finished_is_an_exact_key_and_the_method_path_is_the_stores(two_runs: Path) -> None:
    store = ResultStore(two_runs)
    assert len(store.rows()) == 7
    assert store.finished("market1501", "DBH", 128, "old").config_hash == "old"
    assert store.finished("market1501", "ide-float", None, "ref") is not None
    assert store.finished("market1501", "DBH", 128, "ne") is None  # no prefix match
    assert store.finished("market1501", "DBH", 256, "new") is None
    assert store.finished("duke", "DBH", 128, "new") is None
    assert ResultStore(two_runs / "nothing").rows() == []
    cell = load_cell(two_runs, "DBH", 128)
    assert (
        cell.method_path == ResultStore.method_path(cell.path) == cell.path.with_name("DBH-128-new.method.pt")
    )


# ------------------------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(HashbenchError) as exc:
        read_results(tmp_path)
    assert str(tmp_path / "results.csv") in one_line(exc) and "not found" in str(exc.value)
    with pytest.raises(HashbenchError) as exc:
        read_results(tmp_path / "other.csv")
    assert "other.csv" in one_line(exc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("dataset,method,bits,rank1,date\nmarket1501,DBH,128,50.0,2026\n", "missing required column(s) map, artifact"),
        ('"dataset,method\nmarket1501,DBH\n', "not a readable CSV: header"),
    ],
)  # fmt: skip
# (damaged lines after the header are left out, not errors: tests/faults/test_damaged_lines.py)
def test_errors_are_one_line_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "results.csv").write_text(text)
    with pytest.raises(HashbenchError) as exc:
        read_results(tmp_path)
    msg = one_line(exc)
    assert str(tmp_path / "results.csv") in msg and expected in msg
    with pytest.raises(HashbenchError, match=re.escape(msg)):
        load_results(tmp_path)  # the report's view: the same reader, the same message


def test_every_reader_has_the_readers_errors(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_bytes(
        b"\xff\xfe" + HEADER.encode() + b"market1501,DBH,128,1,2,x,a,0,2026,a.npz\n"
    )
    with pytest.raises(HashbenchError) as exc:
        read_results(tmp_path)
    msg = re.escape(one_line(exc))
    with pytest.raises(HashbenchError, match=msg):
        read_rows(tmp_path)  # hashbench explain / query
    with pytest.raises(HashbenchError, match=msg):
        ResultStore(tmp_path).rows()  # hashbench run (finished cells)
    with pytest.raises(HashbenchError, match=msg):
        load_cell(tmp_path, "DBH", 128)
    (tmp_path / "results.csv").write_text("")
    assert ResultStore(tmp_path).rows() == []  # an empty store: before its first cell
    with pytest.raises(HashbenchError, match="is empty"):
        read_rows(tmp_path)


def test_undecodable_bytes_are_an_unreadable_csv_in_the_header_and_a_damaged_line_after(
    tmp_path: Path,
) -> None:
    (tmp_path / "results.csv").write_bytes(b"dataset,\xff\xfe" + HEADER.encode())
    with pytest.raises(HashbenchError) as exc:
        read_results(tmp_path, required=())
    assert "not a readable CSV: not UTF-8 text" in one_line(exc)
    (tmp_path / "results.csv").write_bytes(
        HEADER.encode()
        + b"market1501,\xff\xfe,128,1,2,x,a,0,2026,a.npz\nmarket1501,DBH,128,1,2,x,a,0,2026,a.npz\n"
    )
    table = read_results(tmp_path)
    assert [r.method for r in table.rows] == ["DBH"] and [(d.line, d.reason) for d in table.damaged] == [
        (2, "not UTF-8 text")
    ]


def test_git_commit_is_dirty_only_for_code_changes(tmp_path):
    """A run's commit says +dirty when the code differs, not when a committed results file grew."""
    import shutil
    import subprocess

    from hashbench.results import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "hashbench").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "hashbench" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "results.csv").write_text("map\n1.0\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "seed")
    clean = git_commit(tmp_path / "hashbench")
    assert len(clean) == 12 and not clean.endswith("+dirty")
    (tmp_path / "results" / "results.csv").write_text("map\n1.0\n2.0\n")
    assert git_commit(tmp_path / "hashbench") == clean
    (tmp_path / "hashbench" / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path / "hashbench") == clean + "+dirty"


EPYC_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu vme

processor\t: 1
model name\t: Something Else 9000
"""
XEON_CPUINFO = "processor : 0\ncpu family : 6\nmodel : 106\nmodel name : Intel(R) Xeon(R) Platinum  8375C CPU @ 2.90GHz\n"


def test_the_device_label_names_the_processor():
    # a generic name gets the family and model that tell the part; a full name stays as it is
    assert cpu_model(EPYC_CPUINFO) == "AMD EPYC family 23 model 1"
    assert cpu_model(XEON_CPUINFO) == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    label = device_name("cpu")
    assert re.fullmatch(r"cpu \(\d+ threads, .+\)", label), label
    assert cpu_model() in label
