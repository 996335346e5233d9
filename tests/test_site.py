"""``hashbench site``: the static site built from the committed results, checked as files and, where
Debian's chromium and chromium-driver are installed, in a real headless browser with the network off."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from hashbench.errors import HashbenchError
from hashbench.site import PLOTLY_JS, best_rows, build_site

from .tiny import cli

pytest.importorskip("plotly")
RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build_site(RESULTS, out)
    return out


def page_data(path: Path) -> dict:
    text = path.read_text()
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert match, f"{path}: no embedded data"
    return json.loads(match.group(1).replace("<\\/", "</"))


def committed_best() -> pd.DataFrame:
    df = pd.read_csv(RESULTS / "market1501" / "results.csv", dtype={"config_hash": str})
    return best_rows(df)


def test_the_site_is_self_contained(site):
    assert (site / PLOTLY_JS).stat().st_size > 1_000_000  # the library itself, not a loader
    for page in site.glob("*.html"):
        text = page.read_text()
        sources = re.findall(r'<script[^>]+src="([^"]+)"', text)
        assert sources == [PLOTLY_JS], page  # no CDN, nothing remote
        assert "http://" not in text.split('id="data"')[0] and "https://" not in text.split('id="data"')[0]
    assert (site / "market1501" / "results.csv").read_bytes() == (
        RESULTS / "market1501" / "results.csv"
    ).read_bytes()
    assert any((site / "market1501").glob("explain_*.png"))


def test_the_embedded_rows_are_the_csv_best_rows_with_provenance(site):
    data = page_data(site / "market1501.html")
    best = committed_best()
    assert len(data["rows"]) == len(best)
    want = {(r.method, None if pd.isna(r.bits) else int(r.bits)): r for r in best.itertuples()}
    lines = (RESULTS / "market1501" / "results.csv").read_text().splitlines()
    for row in data["rows"]:
        r = want[(row["method"], row["bits"])]
        assert row["map"] == pytest.approx(r.map, abs=1e-9)
        assert row["commit"] == r.commit and row["config_hash"] == r.config_hash
        assert lines[row["csv_line"] - 1] == row["csv_text"]  # its own line of results.csv
        assert row["config"] is not None and row["config"]["method"] == row["method"]
    index = page_data(site / "index.html")
    assert [d["slug"] for d in index["datasets"]] == ["market1501"]
    assert index["datasets"][0]["paper"], "the published rows are beside ours"


def test_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HashbenchError, match="no results.csv under"):
        build_site(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, "site", str(RESULTS), "--out", str(tmp_path / "file"))
    assert code != 0 and "--out" in err and "not a directory" in err
    broken = tmp_path / "broken" / "market1501"
    shutil.copytree(RESULTS / "market1501", broken, ignore=shutil.ignore_patterns("scale", "validation"))
    (broken / "configs.jsonl").write_text("{not json\n")
    with pytest.raises(HashbenchError, match=r"configs.jsonl:1: not JSON"):
        build_site(tmp_path / "broken", tmp_path / "out2")


# ------------------------------------------------------------------------------------------ browser
def _driver():
    webdriver = pytest.importorskip("selenium.webdriver")
    chrome = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if not chrome or not chromedriver:
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-file-access-from-files", "--window-size=1400,1000", "--no-first-run",
                # no calls home: this machine's network is closed, and the tests want none
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = _driver()
    yield driver
    driver.quit()


def screenshot(driver, path: Path, width: int = 1400) -> Path:
    """The whole page (the window grown to its height), as a PNG at ``path``."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 140, 12000))
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return path


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _board_values(driver, column: int) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelector('table.board').tBodies[0].rows].map(r => r.cells[arguments[0]].textContent)",
        column,
    )


def test_leaderboard_in_a_browser_offline(site, browser, shots):
    browser.get((site / "index.html").as_uri())
    # the board is built by the page's script: wait until its header row is there (a read right after
    # the load once found it half built)
    deadline = time.monotonic() + 15
    while True:
        heads = browser.execute_script(
            "return [...document.querySelectorAll('table.board th')].map(t => t.textContent)"
        )
        if any(h.split()[:1] == ["2048"] for h in heads[1:]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    bits = [int(h.split()[0]) for h in heads[1:]]
    methods = _board_values(browser, 0)
    best = committed_best()
    for i, method in enumerate(methods):
        if method.endswith("(paper)"):
            continue
        if method.endswith("(float reference)"):  # the same stored value under every length
            want = best[(best["method"] == method.split()[0]) & best["bits"].isna()]["map"]
            assert set(_board_values(browser, 1 + bits.index(2048))[i : i + 1]) == {f"{want.iloc[0]:.2f}"}
            continue
        shown = _board_values(browser, 1 + bits.index(2048))[i]
        want = best[(best["method"] == method) & (best["bits"] == 2048)]["map"]
        assert shown == f"{float(want.iloc[0]):.2f}", method
    # sorting the 2048-bit column: descending, then ascending
    th = browser.find_elements("css selector", "table.board th")[1 + bits.index(2048)]
    th.click()
    values = [float(v) for v in _board_values(browser, 1 + bits.index(2048)) if v]
    assert values == sorted(values, reverse=True)
    assert _board_values(browser, 0) != methods  # the rows moved (the paper's order is not by mAP)
    th.click()
    values = [float(v) for v in _board_values(browser, 1 + bits.index(2048)) if v]
    assert values == sorted(values)
    assert browser.execute_script("return document.querySelectorAll('td.best').length") == len(bits)
    assert _errors(browser) == []
    th.click()  # back to descending, as the README's screenshot shows it
    screenshot(browser, shots / "site-index.png")


def test_dataset_page_charts_render_offline(site, browser, shots):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((site / "market1501.html").as_uri())
    for plot in ("plot-map", "plot-cmc", "plot-cost"):
        # Plotly.newPlot/react return promises: on a loaded 2-core CI machine the marks can land
        # after the load event (a CI run once read 0 of them right after browser.get), so wait
        def marks(driver, plot=plot):
            return driver.execute_script(
                "return document.querySelectorAll('#' + arguments[0] + ' .scatterlayer .trace path, "
                "#' + arguments[0] + ' .scatterlayer .point').length",
                plot,
            )

        try:
            WebDriverWait(browser, 30, poll_frequency=0.2).until(lambda d: marks(d) > 0)
        except TimeoutException:
            pytest.fail(f"{plot}: no marks drawn within 30 s; browser errors: {_errors(browser)}")
    assert browser.execute_script("return document.querySelectorAll('#aq-table tbody tr').length") > 0
    assert browser.execute_script("return document.querySelectorAll('#rows details').length") == len(
        committed_best()
    )
    # the library came from the file beside the page; no resource from the network
    assert browser.execute_script("return typeof Plotly") == "object"
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [u for u in urls if not u.startswith("file://")]
    assert _errors(browser) == []
    screenshot(browser, shots / "site-market1501.png")
