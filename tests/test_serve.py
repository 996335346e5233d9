"""``hashbench serve``: the search service and its web app on a tiny synthetic run, through Starlette's
test client, and the page in headless Chromium where Debian's chromium and chromium-driver are installed."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from hashbench.decoders import make_decoders  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402
from hashbench.runner import run  # noqa: E402
from hashbench.serve import MAX_UPLOAD, SearchService, create_app  # noqa: E402

from .tiny import TINY, cli, tiny_run_config  # noqa: E402


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> SearchService:
    tmp = tmp_path_factory.mktemp("serve")
    run(
        tiny_run_config(
            tmp, methods=["itq"], bits=[64], method_params={"itq": {"n_iter": 5}}, reference=False
        )
    )
    return SearchService(
        "synthetic", "itq", 64, results_dir=tmp / "res", dataset_options=TINY, cache_dir=tmp / "cache"
    )


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    return TestClient(create_app(service))


def png_of(service, split: str, i: int) -> bytes:
    (im,) = service.pipe.dataset.open_images([service.records[split][i]])
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def test_a_description_ranks_by_the_decoder_and_marks_matches(service, client):
    schema = client.get("/api/schema").json()
    assert [g["name"] for g in schema["groups"]] == list(service.schema.names)
    assert schema["decoders"][:2] == ["logistic", "naive-bayes"]
    g0, g1 = service.schema.groups[0], service.schema.groups[1]
    text = f"{g0.name}={g0.values[1]},{g1.name}={g1.values[0]}"
    r = client.post("/api/search", data={"attributes": text, "top": "7", "decoder": "logistic"})
    assert r.status_code == 200
    hits = r.json()["hits"]
    # the same ranking as a logistic decoder fitted here on the cell's training codes
    (decoder,) = make_decoders(["logistic"], service.schema)
    decoder.fit(service.cell.codes("train"), service.cell.attributes("train"))
    score = decoder.score(text, service.gallery)
    want = np.argsort(-score, kind="stable")[:7]
    assert [h["index"] for h in hits] == want.tolist()
    assert [h["description"] for h in hits] == pytest.approx(score[want].tolist())
    predicted = decoder.predict(service.gallery)
    for h in hits:
        asked = {a["name"]: a for a in h["attributes"] if "asked" in a}
        assert set(asked) == {g0.name, g1.name}
        assert asked[g0.name]["match"] == (predicted[h["index"], 0] == 1)
        assert asked[g1.name]["match"] == (predicted[h["index"], 1] == 0)
        assert h["hamming"] is None and h["frame"] is None


def test_a_query_image_ranks_by_hamming_and_frames_by_the_protocol(service, client):
    q = int(np.argmax(service.cell.arrays["ap"]))  # the best-answered query: its hits hold a match
    hits = client.post("/api/search", data={"query": str(q), "top": "20"}).json()["hits"]
    code = service.cell.codes("query")[q]
    dist = (service.gallery != code).sum(1)
    assert [h["index"] for h in hits] == np.argsort(dist, kind="stable")[:20].tolist()
    assert [h["hamming"] for h in hits] == sorted(h["hamming"] for h in hits)
    rec = service.records["query"][q]
    for h in hits:
        same = h["pid"] == rec.pid
        want = (
            "junk" if h["pid"] == -1 or (same and h["camid"] == rec.camid) else "match" if same else "wrong"
        )
        assert h["frame"] == want
    assert "match" in {h["frame"] for h in hits}


def test_an_uploaded_photo_is_encoded_like_the_run(service, client):
    q = int(np.argmax(service.cell.arrays["ap"]))
    r = client.post(
        "/api/search", files={"photo": ("q.png", png_of(service, "query", q), "image/png")}, data={"top": "5"}
    )
    assert r.status_code == 200
    code = service.photo_code(png_of(service, "query", q))
    assert np.array_equal(code, service.cell.codes("query")[q])  # the pipeline of the run
    assert service.records["query"][q].pid in [h["pid"] for h in r.json()["hits"]]


def test_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(service, client):
    name = service.schema.groups[0].name
    cases = [
        ({"data": {"attributes": "colour_of_soul=blue"}}, 400, "unknown attribute"),
        ({"data": {"attributes": f"{name}=purple"}}, 400, "unknown value"),
        ({"data": {}}, 400, "give attributes"),
        ({"data": {"query": "x"}}, 400, "expected an integer"),
        ({"data": {"query": "100000"}}, 400, "expected 0.."),
        ({"data": {"query": "1", "top": "1000"}}, 400, "top 1000"),
        (
            {"data": {"attributes": f"{name}=" + service.schema.groups[0].values[0], "decoder": "magic"}},
            400,
            "decoder",
        ),
        ({"files": {"photo": ("x.jpg", b"not an image at all", "image/jpeg")}}, 400, "not an image"),
        ({"files": {"photo": ("big.jpg", b"\0" * (MAX_UPLOAD + 10), "image/jpeg")}}, 413, "limit"),
        (
            {"content": b"{not a form", "headers": {"content-type": "multipart/form-data; boundary=zz"}},
            400,
            None,
        ),
    ]
    for kwargs, status, text in cases:
        r = client.post("/api/search", **kwargs)
        assert r.status_code == status, (kwargs.get("data"), r.text)
        message = r.json()["error"]
        assert "\n" not in message and (text is None or text in message), message
    assert client.get("/api/search").status_code == 405
    assert client.post("/api/search", data={"query": "0"}).status_code == 200  # still serving


def test_images_are_served_only_from_the_dataset_splits(service, client):
    source = service.records["gallery"][0].source
    r = client.get(f"/image/{source}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    for bad in ("../tiny.py", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "%2Fetc%2Fpasswd", "nope.jpg", ""):
        assert client.get(f"/image/{bad}").status_code == 404, bad
    assert client.get("/nowhere").status_code == 404


def test_serve_cli_errors_are_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "serve", "--method", "itq", "--bits", "64,128", "--results", str(tmp_path))
    assert code == 2 and "--bits" in err
    code, _, err = cli(capsys, "serve", "--method", "itq", "--bits", "64", "--results", str(tmp_path))
    assert code == 2 and "results.csv not found" in err
    code, _, err = cli(capsys, "serve", "--method", "itq", "--bits", "64", "--port", "0")
    assert code == 2 and "--port" in err
    with pytest.raises(HashbenchError, match="not found"):
        SearchService("synthetic", "itq", 64, results_dir=tmp_path)


# ------------------------------------------------------------------------------------------ browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(service):
    uvicorn = pytest.importorskip("uvicorn")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(5)


def test_the_page_in_a_browser(service, live, shots):
    from .test_site import _driver, _errors, screenshot

    driver = _driver()
    driver.execute_cdp_cmd(  # the page talks to 127.0.0.1 only; switch the emulated offline mode off
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    try:
        from selenium.webdriver.support.ui import Select, WebDriverWait

        driver.get(live)
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.find_elements("css selector", "[data-group]"))
        group = service.schema.groups[0]
        Select(driver.find_element("css selector", f'[data-group="{group.name}"]')).select_by_value(
            group.values[1]
        )
        driver.find_element("id", "go").click()
        wait.until(lambda d: len(d.find_elements("css selector", ".tile.hit")) == 10)
        marks = driver.execute_script(
            "return [...document.querySelectorAll('.tile.hit .ok, .tile.hit .bad')].length"
        )
        assert marks == 10  # one queried attribute, marked on every hit
        wait.until(  # every hit's image served and decoded
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('.tile.hit img')].every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        title = driver.find_element("css selector", ".tile.hit").get_attribute("title")
        assert all(name in title for name in service.schema.names)  # every decoded attribute, on hover
        # a query image: framed hits, the query beside them
        Select(driver.find_element("css selector", f'[data-group="{group.name}"]')).select_by_value("")
        driver.find_element("id", "query").send_keys("3")
        driver.find_element("id", "go").click()
        wait.until(
            lambda d: d.find_elements("css selector", ".tile.hit.match, .tile.hit.wrong, .tile.hit.junk")
        )
        frames = driver.execute_script(
            "return [...document.querySelectorAll('.tile.hit')].map(t => t.dataset.frame)"
        )
        assert len(frames) == 10 and set(frames) <= {"match", "wrong", "junk"}
        assert driver.find_elements("css selector", ".query-tile img")
        screenshot(driver, shots / "serve-query.png")  # the synthetic set's images, never committed
        # bad input: the message on the page, then a good query still works
        top = driver.find_element("id", "top")
        top.clear()
        top.send_keys("1000")
        driver.find_element("id", "go").click()
        wait.until(lambda d: d.find_element("id", "error").text)
        assert (
            "400" in driver.find_element("id", "error").text
            and "top" in driver.find_element("id", "error").text
        )
        top.clear()
        top.send_keys("5")
        driver.find_element("id", "go").click()
        wait.until(lambda d: len(d.find_elements("css selector", ".tile.hit")) == 5)
        assert driver.find_element("id", "error").text == ""
        # the one console error allowed is the 400 of the bad request itself
        assert [e for e in _errors(driver) if "400" not in e] == []
    finally:
        driver.quit()
