"""The leaderboard: built only from stored rows, best first, and the drift check CI relies on."""

import shutil
import subprocess

import pytest

from hashbench import leaderboard
from hashbench.cli import main
from hashbench.errors import HashbenchError

HEADER = "dataset,method,bits,map,rank1,train_s,query_ms,bytes_per_code,commit,date,artifact\n"


def write_csv(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text(HEADER + "".join(r + "\n" for r in rows))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    write_csv(
        root / "market1501",
        [
            "market1501,lsh,128,15.00,36.0,0.1,0.10,16,aaa,2026-11-01T00:00:00+00:00,",
            "market1501,itq,128,23.00,47.0,4.0,0.08,16,aaa,2026-11-01T00:00:00+00:00,",
            "market1501,itq,128,21.00,45.0,4.0,0.08,16,bbb,2026-11-02T00:00:00+00:00,",  # worse re-run
            "market1501,itq,2048,38.90,65.0,126.0,0.27,256,aaa,2026-11-01T00:00:00+00:00,",
            "market1501,ide-float,,40.78,67.3,568.0,1.03,5120,aaa,2026-11-01T00:00:00+00:00,",
        ],
    )
    write_csv(root / "dukemtmc", ["dukemtmc,lsh,128,10.00,20.0,0.1,0.10,16,ccc,2026-11-03T00:00:00+00:00,"])
    return root


def test_page_lists_best_rows_first_per_dataset_and_length(results):
    page = leaderboard.build(results)
    market = page[page.index("## Market-1501") :]
    assert page.index("## dukemtmc") < page.index("## Market-1501")  # datasets sorted by id
    first = market[market.index("### 128 bits") : market.index("### 2048 bits")]
    assert first.index("| itq") < first.index("| lsh")  # best first
    assert "23.00" in first and "21.00" not in first  # a method's best row only
    assert "| aaa" in first  # the commit that produced the row
    assert "### Real-valued references" in market and "40.78" in market
    assert "Hamming ties broken by gallery order" in page


def test_check_fails_on_a_hand_edited_csv_and_passes_after_regeneration(results, capsys):
    assert main(["leaderboard", str(results)]) == 0
    assert main(["leaderboard", str(results), "--check"]) == 0
    csv = results / "market1501" / "results.csv"
    csv.write_text(csv.read_text().replace("38.90", "48.90"))  # someone edits a number by hand
    capsys.readouterr()
    assert main(["leaderboard", str(results), "--check"]) == 2
    captured = capsys.readouterr()
    assert "differs from the results" in captured.err and "+| 1   | itq      | 48.90" in captured.out
    assert main(["leaderboard", str(results)]) == 0
    assert main(["leaderboard", str(results), "--check"]) == 0


def test_only_committed_csvs_count_in_a_git_work_tree(results):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q"], cwd=results, check=True)
    subprocess.run(["git", "add", "market1501/results.csv"], cwd=results, check=True)
    files = leaderboard.result_files(results)
    assert [f.parent.name for f in files] == ["market1501"]  # the untracked dukemtmc run is left out
    assert "dukemtmc" not in leaderboard.build(results)


def test_errors(tmp_path):
    with pytest.raises(HashbenchError, match="not a directory"):
        leaderboard.build(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HashbenchError, match="no results.csv"):
        leaderboard.build(tmp_path / "empty")
