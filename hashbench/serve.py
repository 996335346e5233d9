"""A local search page over one fitted cell: ``hashbench serve --dataset D --method M --bits B``.

A Starlette app on uvicorn (the ``serve`` extra), bound to 127.0.0.1 unless ``--host`` says otherwise.
It loads the cell once (:class:`SearchService`): its codes and fitted method (from the results
folder), the run's pipeline rebuilt from the recorded configuration (as ``hashbench query`` does), and
the attribute decoders fitted on the cell's training codes: the generic ones (``logistic``, calibrated;
``naive-bayes``) and the method's own where it has one (DeepSSH: ``deepssh-readout``). Every gallery
code's value scores and decoded attributes are computed once, so a description query is one column sum
and a sort.

Queries (``POST /api/search``, a multipart form; the page at ``/`` builds it):

* ``attributes``: ``name=value,...`` from the dataset's own lists (``GET /api/schema``);
* ``photo``: an uploaded pedestrian image (at most :data:`MAX_UPLOAD` bytes), encoded through the run's
  pipeline; or ``query``: the index of an image of the dataset's query split (its code as the run
  stored it, its identity known, so hits are framed: green the same identity, red another, grey junk
  (same identity and camera, or id -1: the Market-1501 protocol));
* both: ``hamming / bits + alpha x cost`` (the decoder's ``description_cost``), the ranking of
  ``photo_description.csv``.

Each hit: its gallery image (``GET /image/<source>``: only the records of the chosen dataset's splits
are served, anything else, a path with ``..`` or an absolute one included, is 404), Hamming distance to
the query photo, the description's score, the decoded attributes with matches (✓) and mismatches (✗)
against the query, the identity's true ones, and for a method with a code layout (DeepSSH) the code
segment that carries each queried attribute. Bad input gets a 4xx status and a one-line message; the
server keeps serving. Dataset pixels are read from the user's data root and never written anywhere.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np

from .cells import load_cell, run_hint
from .configs import read_configs
from .errors import HashbenchError
from .results import CSV_NAME
from .search import hamming_distances, pack_codes

log = logging.getLogger(__name__)

MAX_UPLOAD = 5 * 1024 * 1024  # bytes of an uploaded photo
MAX_TOP = 100
JUNK_PID = -1


class SearchService:
    """One fitted cell, ready to answer description, photo and query-image searches (no web here)."""

    def __init__(
        self,
        dataset: str,
        method: str,
        bits: int,
        results_dir: str | Path | None = None,
        data_root: str | None = None,
        dataset_options: dict | None = None,
        weights: str | None = None,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        decoders: tuple[str, ...] = ("logistic", "naive-bayes"),
    ) -> None:
        from .decoders import make_decoders
        from .query import prepare_pipeline

        results_dir = Path(results_dir) if results_dir else Path("results") / dataset
        if not (results_dir / CSV_NAME).is_file():
            raise HashbenchError(
                f"{results_dir / CSV_NAME} not found: run `{run_hint(dataset, method, bits, results_dir)}` first"
            )
        started = time.perf_counter()
        cell = load_cell(results_dir, method, bits)
        cell.require(
            "gallery_codes", "gallery_pids", "gallery_camids", "schema", "train_codes", "train_attributes"
        )
        self.cell = cell
        self.schema = cell.schema
        self.pipe = prepare_pipeline(
            cell, dataset, data_root, dataset_options, weights, Path(cache_dir) if cache_dir else None, device
        )
        self.gallery = cell.codes("gallery")
        self.gallery_packed = np.ascontiguousarray(cell.arrays["gallery_codes"])  # for photo searches
        self.gallery_pids = cell.arrays["gallery_pids"].astype(np.int64)
        self.gallery_camids = cell.arrays["gallery_camids"].astype(np.int64)
        n_groups = len(self.schema)
        self.gallery_attributes = (
            cell.attributes("gallery")
            if "gallery_attributes" in cell.arrays
            else np.full((len(self.gallery), n_groups), -1)
        )
        self.records = {split: self.pipe.splits.records[split] for split in ("gallery", "query")}
        self.sources = {
            r.source: (split, i) for split, recs in self.records.items() for i, r in enumerate(recs)
        }
        self.query_codes = cell.codes("query") if "query_codes" in cell.arrays else None
        record = read_configs(cell.results_dir).get(cell.row.get("config_hash", ""), {})
        self.layout = {k: tuple(v) for k, v in (record.get("code_layout") or {}).items()}
        train_codes, train_attributes = cell.codes("train"), cell.attributes("train")
        self.decoders = {}
        for decoder in make_decoders(list(decoders), self.schema):
            self.decoders[decoder.name] = decoder.fit(train_codes, train_attributes)
        own = cell.fitted_method(self.pipe.context(), registry=self.pipe.registry)
        if own is not None and (mine := own.decoder(self.schema)) is not None:
            self.decoders[mine.name] = mine.fit(train_codes, train_attributes)
        self.scores = {name: d.value_scores(self.gallery) for name, d in self.decoders.items()}
        self.predicted = {name: d.predict(self.gallery) for name, d in self.decoders.items()}
        self.setup_s = time.perf_counter() - started
        log.info(
            "serving %s @ %d bits on %s: %d gallery images, decoders %s (setup %.1f s)",
            method, bits, dataset, len(self.gallery), ", ".join(self.decoders), self.setup_s,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------- requests

    def schema_json(self) -> dict:
        return {
            "dataset": self.cell.dataset,
            "method": self.cell.method,
            "bits": self.cell.bits,
            "gallery": len(self.gallery),
            "queries": 0 if self.query_codes is None else len(self.query_codes),
            "decoders": list(self.decoders),
            "groups": [
                {"name": g.name, "values": list(g.values), "segment": self.layout.get(g.name)}
                for g in self.schema.groups
            ],
            "max_upload": MAX_UPLOAD,
            "max_top": MAX_TOP,
        }

    def parse_description(self, text: str) -> dict[int, int]:
        """``name=value,...`` -> {group index: value code}; unknown names and values: one line."""
        text = (text or "").strip()
        if not text:
            return {}
        query = self.schema.parse(text)
        if not query:
            raise HashbenchError(f"attributes {text!r}: expected name=value,...")
        return query

    def photo_code(self, data: bytes) -> np.ndarray:
        """The code of an uploaded photo through the run's pipeline; a non-image: one line."""
        import torch
        from PIL import Image, UnidentifiedImageError

        from .method import check_codes

        if len(data) > MAX_UPLOAD:
            raise HashbenchError(f"photo: {len(data)} bytes, more than the limit of {MAX_UPLOAD}")
        try:
            with Image.open(io.BytesIO(data)) as im:
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise HashbenchError(f"photo: not an image ({type(exc).__name__})") from None
        method = self.cell.fitted_method(self.pipe.context(), required=True, registry=self.pipe.registry)
        view = self.pipe.image_view([image], method.consumes, len(self.schema))
        with torch.inference_mode():
            codes = method.encode(view)
        return check_codes(codes, 1, self.cell.bits, self.cell.method)[0]

    def search(
        self,
        attributes: str = "",
        photo: bytes | None = None,
        query: int | None = None,
        decoder: str = "",
        alpha: float = 1.0,
        top: int = 10,
    ) -> dict:
        """The top hits for a description and/or a photo (uploaded bytes or a query-split index)."""
        started = time.perf_counter()
        if not 1 <= int(top) <= MAX_TOP:
            raise HashbenchError(f"top {top}: expected 1..{MAX_TOP}")
        decoder = decoder or next(iter(self.decoders))
        if decoder not in self.decoders:
            raise HashbenchError(f"decoder {decoder!r}: unknown; valid: {', '.join(self.decoders)}")
        asked = self.parse_description(attributes)
        if photo is not None and query is not None:
            raise HashbenchError("give a photo or a query image, not both")
        truth = None
        code = None
        if query is not None:
            if self.query_codes is None:
                raise HashbenchError("this cell stored no query codes")
            if not 0 <= int(query) < len(self.query_codes):
                raise HashbenchError(f"query {query}: expected 0..{len(self.query_codes) - 1}")
            code = self.query_codes[int(query)]
            rec = self.records["query"][int(query)]
            truth = (rec.pid, rec.camid)
        elif photo is not None:
            code = self.photo_code(photo)
        if code is None and not asked:
            raise HashbenchError("give attributes (name=value,...), a photo or a query image")
        hamming = None
        if code is not None:  # packed XOR + popcount: ~30x less work than comparing unpacked bits
            hamming = hamming_distances(pack_codes(code[None, :]), self.gallery_packed, threads=1)[0]
            hamming = hamming.astype(np.int64)
        description = None
        if asked:
            dec = self.decoders[decoder]
            columns = dec.query_rows(asked)
            description = self.scores[decoder][:, columns].sum(1)
        if asked and code is not None:
            cost = dec.cost(asked, self.gallery, self.scores[decoder])
            # the ranking of photo_description.csv
            order = np.argsort(hamming / self.cell.bits + alpha * cost, kind="stable")
        elif asked:
            order = np.argsort(-description, kind="stable")
        else:
            order = np.argsort(hamming, kind="stable")
        search_ms = 1000 * (time.perf_counter() - started)
        hits = [
            self._hit(rank, int(i), asked, decoder, hamming, description, truth)
            for rank, i in enumerate(order[:top], 1)
        ]
        return {
            "query": {
                "attributes": {
                    self.schema.groups[g].name: self.schema.groups[g].values[v] for g, v in asked.items()
                },
                "query": None
                if query is None
                else {"index": int(query), "source": self.records["query"][int(query)].source},
                "photo": photo is not None,
                "decoder": decoder if asked else None,
                "alpha": alpha if asked and code is not None else None,
            },
            "search_ms": search_ms,
            "hits": hits,
        }

    def _hit(self, rank, i, asked, decoder, hamming, description, truth) -> dict:
        pid, camid = int(self.gallery_pids[i]), int(self.gallery_camids[i])
        frame = None
        if truth is not None:
            if pid == JUNK_PID or (pid == truth[0] and camid == truth[1]):
                frame = "junk"
            else:
                frame = "match" if pid == truth[0] else "wrong"
        decoded = self.predicted[decoder][i]
        true = self.gallery_attributes[i]
        groups = []
        for g, group in enumerate(self.schema.groups):
            entry = {
                "name": group.name,
                "decoded": group.values[int(decoded[g])],
                "true": None if true[g] < 0 else group.values[int(true[g])],
                "segment": self.layout.get(group.name),
            }
            if g in asked:
                entry["asked"] = group.values[asked[g]]
                entry["match"] = bool(int(decoded[g]) == asked[g])
            groups.append(entry)
        return {
            "rank": rank,
            "index": i,
            "source": self.records["gallery"][i].source,
            "pid": pid,
            "camid": camid,
            "hamming": None if hamming is None else int(hamming[i]),
            "description": None if description is None else float(description[i]),
            "frame": frame,
            "attributes": groups,
        }

    def image(self, source: str) -> bytes:
        """JPEG bytes of a record of the dataset's gallery or query split; anything else: KeyError."""
        split, i = self.sources[source]
        (im,) = self.pipe.dataset.open_images([self.records[split][i]])
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=90)
        return out.getvalue()


# ----------------------------------------------------------------------------------------------- web


def create_app(service: SearchService):
    """The Starlette app over a :class:`SearchService`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def page(request: Request):
        return HTMLResponse(PAGE)

    async def schema(request: Request):
        return JSONResponse(service.schema_json())

    async def search(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPLOAD + 64 * 1024:
            return error(413, f"request of {length} bytes: a photo may have at most {MAX_UPLOAD} bytes")
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # malformed multipart, or not a form at all
            return error(400, f"malformed request: {type(exc).__name__}: {exc}".splitlines()[0])
        try:
            photo = None
            upload = form.get("photo")
            if upload is not None and not isinstance(upload, str):
                photo = await upload.read(MAX_UPLOAD + 1)
                if len(photo) > MAX_UPLOAD:
                    return error(413, f"photo: more than the limit of {MAX_UPLOAD} bytes")
                if not photo:
                    photo = None
            query = form.get("query") or None
            result = service.search(
                attributes=str(form.get("attributes") or ""),
                photo=photo,
                query=None if query is None else _int(query, "query"),
                decoder=str(form.get("decoder") or ""),
                alpha=_float(form.get("alpha") or 1.0, "alpha"),
                top=_int(form.get("top") or 10, "top"),
            )
        except HashbenchError as exc:
            return error(400, str(exc).splitlines()[0])
        return JSONResponse(result)

    async def image(request: Request):
        source = request.path_params["source"]
        if source not in service.sources:  # `..`, absolute paths, files outside the splits: not served
            return error(404, "no such image in this dataset")
        return Response(
            service.image(source), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    async def not_found(request: Request, exc):
        return error(getattr(exc, "status_code", 404), getattr(exc, "detail", "not found"))

    async def favicon(request: Request):
        return Response(status_code=204)

    routes = [
        Route("/", page),
        Route("/favicon.ico", favicon),
        Route("/api/schema", schema),
        Route("/api/search", search, methods=["POST"]),
        Route("/image/{source:path}", image),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def _int(value, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise HashbenchError(f"{name} {value!r}: expected an integer") from None


def _float(value, name: str) -> float:
    try:
        return float(str(value))
    except ValueError:
        raise HashbenchError(f"{name} {value!r}: expected a number") from None


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    print(f"hashbench serve: http://{host}:{port}/ ({service.cell.method} @ {service.cell.bits} bits)")
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hashbench search</title>
<style>
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}
fieldset{border:1px solid #ccc;margin:.5em 0}label{margin-right:1em;display:inline-block;margin-bottom:.3em}
#hits{display:flex;flex-wrap:wrap;gap:.6em;margin-top:1em}
.tile{width:150px;font-size:12px;border:4px solid #ccc;padding:3px}
.tile.match{border-color:#2ca02c}.tile.wrong{border-color:#d62728}.tile.junk{border-color:#999}
.tile img{width:100%;height:auto;display:block}.query-tile{border-color:#1f77b4}
.ok{color:#2ca02c}.bad{color:#d62728}#error{color:#d62728;font-weight:bold}
</style></head><body>
<h1 id="title">hashbench search</h1>
<form id="form">
<fieldset><legend>description (values from the dataset's lists)</legend><div id="groups"></div></fieldset>
<fieldset><legend>photo</legend>
<label>upload <input type="file" name="photo" id="photo" accept="image/*"></label>
<label>or query image # <input type="number" name="query" id="query" min="0"></label></fieldset>
<label>decoder <select name="decoder" id="decoder"></select></label>
<label>alpha <input type="number" name="alpha" id="alpha" value="1" step="0.1"></label>
<label>top <input type="number" name="top" id="top" value="10" min="1"></label>
<button type="submit" id="go">search</button>
</form>
<p id="error" role="alert"></p><p id="status"></p>
<div id="hits"></div>
<script>
"use strict";
const $ = id => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "text") e.textContent = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k); return e; };
let SCHEMA = null;
fetch("api/schema").then(r => r.json()).then(s => {
  SCHEMA = s;
  $("title").textContent = `${s.method} @ ${s.bits} bits on ${s.dataset}: ${s.gallery} gallery images`;
  $("query").title = `0 to ${s.queries - 1}`; $("top").title = `1 to ${s.max_top}`;  // the server checks both
  for (const g of s.groups) {
    const sel = el("select", { name: "g-" + g.name, "data-group": g.name }, el("option", { value: "", text: "any" }));
    g.values.forEach(v => sel.append(el("option", { value: v, text: v })));
    $("groups").append(el("label", {}, g.name + (g.segment ? ` (bits ${g.segment[0]}-${g.segment[1] - 1})` : "") + " ", sel));
  }
  s.decoders.forEach(d => $("decoder").append(el("option", { value: d, text: d })));
});
$("form").addEventListener("submit", async ev => {
  ev.preventDefault(); $("error").textContent = ""; $("status").textContent = "searching...";
  const form = new FormData();
  const asked = [...document.querySelectorAll("[data-group]")].filter(s => s.value).map(s => s.dataset.group + "=" + s.value);
  form.append("attributes", asked.join(","));
  const file = $("photo").files[0]; if (file) form.append("photo", file);
  if ($("query").value !== "") form.append("query", $("query").value);
  for (const k of ["decoder", "alpha", "top"]) form.append(k, $(k).value);
  const r = await fetch("api/search", { method: "POST", body: form });
  const out = await r.json();
  $("hits").replaceChildren();
  if (!r.ok) { $("error").textContent = `${r.status}: ${out.error}`; $("status").textContent = ""; return; }
  $("status").textContent = `${out.hits.length} hits in ${out.search_ms.toFixed(1)} ms (search, images excluded)`;
  if (out.query.query || file) {
    const src = out.query.query ? "image/" + out.query.query.source : URL.createObjectURL(file);
    $("hits").append(el("div", { class: "tile query-tile" }, el("img", { src, alt: "query" }), el("div", { text: "query" })));
  }
  for (const h of out.hits) {
    const info = el("div", {}, el("b", { text: `#${h.rank}` }), ` id ${h.pid} cam ${h.camid}`);
    if (h.hamming !== null) info.append(el("div", { text: `hamming ${h.hamming}` }));
    if (h.description !== null) info.append(el("div", { text: `description score ${h.description.toPrecision(3)}` }));
    for (const a of h.attributes.filter(a => "asked" in a)) info.append(el("div", { class: a.match ? "ok" : "bad",
      text: `${a.match ? "\\u2713" : "\\u2717"} ${a.name}: ${a.decoded}` + (a.segment ? ` [bits ${a.segment[0]}-${a.segment[1] - 1}]` : "") + (a.true ? ` (true ${a.true})` : "") }));
    const decoded = h.attributes.map(a => `${a.true === null ? "?" : a.decoded === a.true ? "\u2713" : "\u2717"} ${a.name}: ${a.decoded}` +
      (a.true !== null && a.decoded !== a.true ? ` (true ${a.true})` : "") + (a.segment ? ` [bits ${a.segment[0]}-${a.segment[1] - 1}]` : "")).join("\\n");
    $("hits").append(el("div", { class: "tile hit " + (h.frame || ""), "data-frame": h.frame || "", title: "decoded from the code:\\n" + decoded },
      el("img", { src: "image/" + h.source, alt: h.source, title: h.source }), info));
  }
});
</script></body></html>
"""
