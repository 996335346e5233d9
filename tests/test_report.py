"""Tests of hashbench.report: tables, rendering, figures and the report writer, on a fake results store."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hashbench.errors import HashbenchError
from hashbench.report import (
    MODERN_ORDER,
    PROTOCOL,
    cmc_curves,
    cost_devices,
    cost_table,
    load_paper,
    load_results,
    method_order,
    method_styles,
    paper_tables,
    plot_cmc,
    plot_map_vs_bits,
    render,
    render_costs,
    select_latest,
    write_report,
)

BITS = (128, 256, 512, 1024, 2048)
METHODS = ("KSH-CNN", "SDH-CNN", "DBH", "PDH", "DeepSSH")
COLUMNS = (
    "dataset, method, bits, map, rank1, rank5, rank10, rank20, train_s, encode_s, encode_ms_per_image, "
    "query_ms, bytes_per_code, n_train, n_query, n_gallery, backbone, input_size, seed, device, version, "
    "commit, config_hash, date, artifact"
).split(", ")


def fake_map(method: str, bits: int) -> float:
    """mAP of the fake store: increases with the method's index and the code length."""
    if (method, bits) == ("DeepSSH", 128):
        return 24.10
    return round(10.0 + 3.0 * METHODS.index(method) + 2.0 * BITS.index(bits) + 0.123, 4)


def write_store(root: Path, rows: list[dict] | None = None) -> Path:
    """A results directory: results.csv + one .npz artifact per row (cmc rises from rank1 towards 1)."""
    (root / "art").mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = []
        # bits written out of numeric order (and as strings would sort lexicographically: 1024 < 128)
        for bits in (1024, 128, 2048, 512, 256):
            for method in METHODS:
                m = fake_map(method, bits)
                rows.append(dict(method=method, bits=bits, map=m, rank1=m + 20, date="2025-05-02T09:00:00"))
        rows.append(dict(method="ide-float", bits=None, map=60.5, rank1=80.25, date="2025-05-02T09:00:00"))
        # an older run of DeepSSH@2048 with another config, listed *after* the newer one: date must win
        rows.append(
            dict(
                method="DeepSSH", bits=2048, map=1.0, rank1=2.0, date="2025-04-01T09:00:00", config_hash="old"
            )
        )
    full = []
    for i, r in enumerate(rows):
        bits = r.get("bits")
        art = r.get("artifact", f"art/{i}_{r['method']}_{bits or 'float'}.npz")
        ranks = np.arange(50)
        cmc = 1 - (1 - r["rank1"] / 100) * np.exp(-0.05 * ranks)
        if art:
            np.savez(root / art, cmc=cmc, ap=np.linspace(0, 1, 30))
        row = {c: "" for c in COLUMNS}
        row.update(
            dataset="market1501",
            config_hash="abc123",
            seed=0,
            device="cpu",
            artifact=art,
            rank5=cmc[4] * 100,
            rank10=cmc[9] * 100,
            rank20=cmc[19] * 100,
        )
        row.update({k: ("" if v is None else v) for k, v in r.items()})
        full.append(row)
    pd.DataFrame(full, columns=COLUMNS).to_csv(root / "results.csv", index=False)
    return root


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "results" / "market1501")


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------ loading


def test_load_results_dir_and_file(store: Path) -> None:
    a, b = load_results(store), load_results(store / "results.csv")
    assert len(a) == len(b) == 27
    assert str(a["bits"].dtype) == "Int64"
    assert a.loc[a["method"] == "ide-float", "bits"].isna().all()


def test_load_results_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HashbenchError) as exc:
        load_results(tmp_path)
    assert "results.csv" in one_line(exc) and "not found" in str(exc.value)
    with pytest.raises(HashbenchError):
        load_results(tmp_path / "nope.csv")


def test_load_results_missing_columns_named(store: Path) -> None:
    df = pd.read_csv(store / "results.csv").drop(columns=["map", "artifact"])
    df.to_csv(store / "results.csv", index=False)
    with pytest.raises(HashbenchError) as exc:
        load_results(store)
    msg = one_line(exc)
    assert "results.csv" in msg and "map" in msg and "artifact" in msg


def test_load_results_bad_bits_line_is_left_out(store: Path, caplog) -> None:
    df = pd.read_csv(store / "results.csv")
    df["bits"] = df["bits"].astype(object)
    df.loc[0, "bits"] = "many"
    df.to_csv(store / "results.csv", index=False)
    # a damaged line (issue 19): left out with one warning naming it, every other row kept
    with caplog.at_level("WARNING", logger="hashbench.results"):
        kept = load_results(store)
    assert len(kept) == len(df) - 1
    assert "line 2" in caplog.text and "bits 'many'" in caplog.text


# ------------------------------------------------------------------------------------------- tables


def test_paper_table_values_shape_order(store: Path) -> None:
    table = paper_tables(load_results(store))
    assert list(table.columns) == list(BITS)  # numeric order
    assert list(table.index) == [*METHODS, "ide-float"]  # paper order, reference last
    assert table.shape == (6, 5)
    for method in METHODS:
        for bits in BITS:
            if (method, bits) != ("DeepSSH", 2048):
                assert table.at[method, bits] == pytest.approx(fake_map(method, bits))
    assert table.at["DeepSSH", 2048] == pytest.approx(fake_map("DeepSSH", 2048))  # latest by date, not 1.0
    assert (table.loc["ide-float"] == 60.5).all()  # reference under every column
    assert table.attrs["reference"] == ["ide-float"]
    rank1 = paper_tables(load_results(store), "rank1")
    assert rank1.at["PDH", 512] == pytest.approx(fake_map("PDH", 512) + 20)


def test_method_order_paper_then_modern_then_the_rest() -> None:
    names = ["lsh", "ctf", "itq", "DeepSSH", "hashnet", "dpsh", "KSH-CNN", "greedyhash", "csq", "dsh", "zeta"]
    assert method_order(names) == ["KSH-CNN", "DeepSSH", *MODERN_ORDER, "itq", "lsh", "zeta"]
    styles = method_styles([*METHODS, *MODERN_ORDER, "itq", "lsh"])
    assert len(set(styles.values())) == len(styles) == 13  # one (colour, marker) each


def test_select_latest_and_config_hash(store: Path) -> None:
    df = load_results(store)
    latest = select_latest(df)
    assert len(latest) == 26
    old = select_latest(df, config_hash="old")
    assert sorted(old["method"]) == ["DeepSSH", "ide-float"]
    assert old.loc[old["method"] == "ide-float", "bits"].isna().all()  # references kept whatever the config
    assert old.loc[old["method"] == "DeepSSH", "map"].item() == 1.0


def test_paper_tables_errors(store: Path) -> None:
    df = load_results(store)
    with pytest.raises(HashbenchError) as exc:
        paper_tables(df, metric="precision")
    assert "precision" in one_line(exc)
    two = pd.concat([df, df.assign(dataset="duke")])
    with pytest.raises(HashbenchError) as exc:
        paper_tables(two)
    assert "duke" in one_line(exc)
    assert paper_tables(two, dataset="duke").shape == (6, 5)


# ---------------------------------------------------------------------------------------- rendering


def test_render_markdown_bold_best_and_protocol(store: Path) -> None:
    text = render(paper_tables(load_results(store)), "markdown")
    assert PROTOCOL in text
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header, rows = lines[0], lines[2:]
    assert "128 bits" in header and header.index("128 bits") < header.index("1024 bits")
    # DeepSSH is best in every column: bold there, nowhere else; the reference is never bold
    deep = next(r for r in rows if r.startswith("| DeepSSH"))
    assert deep.count("**") == 2 * len(BITS)
    assert "**24.10**" in deep
    assert sum(r.count("**") for r in rows) == 2 * len(BITS)
    ref = next(r for r in rows if "ide-float" in r)
    assert "*60.50*" in ref and "**" not in ref
    assert "| 10.12" not in text and "10.12" in text  # 2 decimals (10.123 -> 10.12)


def test_render_bold_ties(store: Path) -> None:
    table = paper_tables(load_results(store))
    table.loc["PDH", 128] = table.loc["DeepSSH", 128] + 0.001  # equal at 2 decimals
    text = render(table)
    assert text.count("**24.10**") == 2


def test_render_latex_is_a_tabular(store: Path) -> None:
    text = render(paper_tables(load_results(store)), "latex", caption="mAP & more_stuff")
    assert PROTOCOL in text
    assert r"\caption{mAP \& more\_stuff}" in text
    m = re.search(r"\\begin\{tabular\}\{([lrc]+)\}\n(.*?)\n\\end\{tabular\}", text, re.S)
    assert m, text
    n_cols = len(m.group(1))
    assert n_cols == 1 + len(BITS)
    body = m.group(2).splitlines()
    assert body[0] == r"\toprule" and body[-1] == r"\bottomrule"
    rows = [line for line in body if line.rstrip().endswith(r"\\")]
    assert len(rows) == 1 + 6  # header + 5 methods + reference
    for row in rows:
        assert row.count("&") == n_cols - 1
    assert body.count(r"\midrule") == 2  # under the header, and above the reference row
    assert text.count(r"\textbf{") == len(BITS)
    assert r"\textit{60.50}" in text
    assert text.count("{") == text.count(r"\{") + text.count("}") - text.count(r"\}")  # balanced
    assert "HBX" not in text and "textbackslash" not in text


def test_render_bad_format(store: Path) -> None:
    with pytest.raises(HashbenchError) as exc:
        render(paper_tables(load_results(store)), "html")
    assert "html" in one_line(exc)


def test_paper_comparison(store: Path, tmp_path: Path) -> None:
    paper = tmp_path / "paper.csv"
    paper.write_text("method,bits,map\ndeepssh,128,20.62\nDBH,2048,30.00\nCNNH,128,9.5\n")
    published = load_paper(paper)
    assert load_paper(paper, "rank1") is None  # no rank1 column: no comparison for that table
    text = render(paper_tables(load_results(store)), paper=published)
    deep = next(line for line in text.splitlines() if line.startswith("| DeepSSH "))
    assert "**24.10** (+3.48)" in deep
    dbh = next(line for line in text.splitlines() if line.startswith("| DBH "))
    assert f"{fake_map('DBH', 2048):.2f} (-{30 - round(fake_map('DBH', 2048), 2):.2f})" in dbh
    assert re.search(r"\| deepssh \(paper\) +\| +20\.62 \|", text)
    assert "CNNH (paper)" in text  # published-only method still listed
    lines = text.splitlines()
    assert lines.index(deep) + 1 == lines.index(next(x for x in lines if x.startswith("| deepssh (paper)")))


def test_paper_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "paper.csv"
    bad.write_text("name,bits,map\nDBH,128,1\n")
    with pytest.raises(HashbenchError) as exc:
        load_paper(bad)
    assert "method" in one_line(exc) and "paper.csv" in str(exc.value)
    with pytest.raises(HashbenchError):
        load_paper(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------ figures


def assert_png(path: Path, min_size: tuple[int, int] = (600, 400)) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.std() > 10  # not blank
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    assert coloured.mean() > 0.002  # the method lines are drawn in colour


def test_plot_map_vs_bits(store: Path, tmp_path: Path) -> None:
    out = plot_map_vs_bits(load_results(store), tmp_path / "fig" / "map.png")
    assert_png(out)


def test_plot_cmc(store: Path, tmp_path: Path) -> None:
    out = plot_cmc(load_results(store), store, 2048, tmp_path / "cmc.png", max_rank=20)
    assert_png(out)


def test_cmc_curves_read_from_artifacts(store: Path) -> None:
    df = load_results(store)
    curves = cmc_curves(df, store, 2048, max_rank=20)
    assert list(curves.columns) == [*METHODS, "ide-float"]
    assert list(curves.index) == list(range(1, 21))
    latest = select_latest(df)
    for method in curves.columns:
        row = latest[(latest["method"] == method) & (latest["bits"].isna() | (latest["bits"] == 2048))]
        with np.load(store / row["artifact"].item()) as npz:
            np.testing.assert_allclose(curves[method], npz["cmc"][:20] * 100)
    assert curves.at[1, "DeepSSH"] == pytest.approx(fake_map("DeepSSH", 2048) + 20)  # the newer config


def test_plot_cmc_errors(store: Path, tmp_path: Path) -> None:
    df = load_results(store)
    with pytest.raises(HashbenchError) as exc:
        plot_cmc(df, store, 64, tmp_path / "x.png")
    assert "64" in one_line(exc)
    with pytest.raises(HashbenchError) as exc:
        plot_cmc(df, store, 128, tmp_path / "x.png", max_rank=60)
    assert "max_rank" in one_line(exc)
    latest = select_latest(df)
    art = latest.loc[(latest["method"] == "PDH") & (latest["bits"] == 128), "artifact"].item()
    (store / art).unlink()
    with pytest.raises(HashbenchError) as exc:
        plot_cmc(df, store, 128, tmp_path / "x.png")
    assert art in one_line(exc)


def test_cmc_artifact_must_be_fractions(tmp_path: Path) -> None:
    root = write_store(tmp_path, [dict(method="DBH", bits=128, map=10.0, rank1=30.0, date="2025-01-01")])
    art = load_results(root)["artifact"].item()
    np.savez(root / art, cmc=np.linspace(30, 90, 50), ap=np.zeros(3))
    with pytest.raises(HashbenchError) as exc:
        plot_cmc(load_results(root), root, 128, tmp_path / "x.png")
    assert "0-1" in one_line(exc)


# ------------------------------------------------------------------------------------------- report


def test_write_report_default_dir(store: Path) -> None:
    report = write_report(store, cmc_bits=(2048, 64, 128))  # 64 is absent: skipped
    expected = {
        "table_map.md",
        "table_rank1.md",
        "table_map.tex",
        "table_rank1.tex",
        "table_cost.md",
        "map_vs_bits.png",
        "cmc_2048.png",
        "cmc_128.png",
    }
    assert set(report) == expected
    for name, path in report.items():
        assert path == store / name and path.is_file()
    assert PROTOCOL in (store / "table_rank1.tex").read_text()
    assert "Rank-1" in report.markdown and "mAP" in report.markdown
    assert report.markdown.count(PROTOCOL) == 2
    assert_png(report["cmc_128.png"])


def test_cost_table_sums_each_methods_cells(tmp_path: Path) -> None:
    def row(method, bits, train_s, cell_s, enc, q, nbytes):
        m = 30.0
        return dict(method=method, bits=bits, map=m, rank1=m, date="2025-05-02T09:00:00", train_s=train_s,
                    cell_s=cell_s, encode_ms_per_image=enc, query_ms=q, bytes_per_code=nbytes)  # fmt: skip

    rows = [
        row("DBH", 2048, 200.0, 260.0, 1.5, 0.3, 256),
        row("DBH", 128, 100.0, 130.0, 1.25, 0.1, 16),
        row("ide-float", None, 500.0, 2.0, 6.0, 1.0, 5120),
        row("lsh", 128, 0.02, 1.0, 0.02, 0.1, 16),
    ]
    global COLUMNS
    saved, COLUMNS = COLUMNS, [*COLUMNS, "cell_s"]
    try:
        store = write_store(tmp_path / "c", rows)
    finally:
        COLUMNS = saved
    table = cost_table(load_results(store)).set_index("method")
    assert list(table.index) == ["DBH", "lsh", "*ide-float*", "**all**"]
    assert table.loc["DBH", "bits"] == "128 – 2048"
    assert table.loc["DBH", "train s / cell"] == "100.0 – 200.0"  # shortest code first
    assert table.loc["DBH", "wall min (all cells)"] == "6.5"  # (130 + 260) / 60
    assert table.loc["DBH", "encode ms / image"] == "1.250 – 1.500"
    assert table.loc["lsh", "bytes / code"] == "16"
    assert table.loc["*ide-float*", "bits"] == "float"
    assert table.loc["**all**", "wall min (all cells)"] == f"**{(130 + 260 + 2 + 1) / 60:.1f}**"
    # the machine the times come from is named; cells of several machines are counted per machine
    assert cost_devices(load_results(store)) == Counter({"cpu": 4})
    assert "Measured on" not in render_costs(table)
    one = render_costs(table, Counter({"cpu (2 threads, AMD EPYC family 23 model 1, x86_64)": 4}))
    assert "Measured on cpu (2 threads, AMD EPYC family 23 model 1, x86_64)." in one
    two = render_costs(table, Counter({"cpu (2 threads, A, x86_64)": 3, "cpu (2 threads, B, x86_64)": 1}))
    assert (
        "Measured on 2 machines (cpu (2 threads, A, x86_64): 3 cells; cpu (2 threads, B, x86_64): 1 cells)"
        in two
    )
    # rows of a version without cell_s: the wall time is unknown, not zero
    table = cost_table(load_results(write_store(tmp_path / "d", rows))).set_index("method")
    assert (
        table.loc["DBH", "wall min (all cells)"] == "–"
        and table.loc["**all**", "wall min (all cells)"] == "–"
    )


def test_write_report_out_dir_and_paper(store: Path, tmp_path: Path) -> None:
    paper = tmp_path / "paper.csv"
    paper.write_text("method,bits,map,rank1\nDEEPSSH,128,20.62,40.00\n")
    out = tmp_path / "out"
    report = write_report(store / "results.csv", out_dir=out, paper=paper)
    assert all(p.parent == out for p in report.values())
    assert "**24.10** (+3.48)" in (out / "table_map.md").read_text()
    assert "**44.10** (+4.10)" in (out / "table_rank1.md").read_text()
    assert "paper" not in (out / "table_map.tex").read_text()  # LaTeX tables: ours only
