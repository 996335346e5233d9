"""A static site of the benchmark: ``hashbench site RESULTS_ROOT --out SITE``.

Every results folder under ``RESULTS_ROOT`` (those :func:`hashbench.leaderboard.result_files` finds:
the committed ``results.csv`` files, validation runs left out) becomes one page per dataset, and an
index holds one sortable leaderboard per dataset. The site opens from ``file://`` with no network:

* the data of each page is embedded in it as JSON (a browser refuses ``fetch`` on ``file://``);
* the one library, Plotly's JavaScript (from the ``plotly`` Python package, the ``site`` extra), is
  copied beside the pages as ``plotly.min.js``; no CDN;
* the CSVs a page is built from are copied beside it (downloads), and so are the explain heatmaps.

Nothing is recomputed: every number shown is a number stored, read through the same functions as the
Markdown report (:func:`hashbench.report.selection.load_results`, the leaderboard's best-row rule,
:func:`hashbench.report.attribute_queries.load_attribute_queries`). Every row links to its provenance:
commit, config hash and the full recorded config (``configs.jsonl``), seed, device, date, and its line
of ``results.csv``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import HashbenchError
from .leaderboard import result_files
from .report.attribute_queries import load_attribute_queries
from .report.selection import dataset_title, load_results, method_order
from .results import CMC_NAME, CSV_NAME

PLOTLY_JS = "plotly.min.js"
PAPER_NAME = "paper.csv"
CONFIGS_NAME = "configs.jsonl"
CITATION_NAME = "CITATION.cff"
ROW_COLUMNS = (
    "method", "bits", "map", "rank1", "rank5", "rank10", "train_s", "encode_ms_per_image", "query_ms",
    "bytes_per_code", "config_hash", "seed", "device", "commit", "date", "version",
)  # fmt: skip
METRIC_LABELS = {"map": "mAP", "rank1": "rank-1", "desc_rank1": "description rank-1"}


def plotly_js() -> Path:
    """The path of Plotly's bundled JavaScript, or a one-line error naming the missing extra."""
    try:
        import plotly
    except ImportError:
        raise HashbenchError("hashbench site needs plotly: pip install -e '.[site]'") from None
    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
    if not path.is_file():
        raise HashbenchError(f"plotly {plotly.__version__}: no {path}; reinstall plotly")
    return path


def _clean(value):
    """A JSON-safe scalar: NaN / NA -> None, numpy scalars -> Python."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    return value


def _records(frame: pd.DataFrame, columns) -> list[dict]:
    have = [c for c in columns if c in frame.columns]
    return [
        {c: _clean(v) for c, v in zip(have, row, strict=True)} for row in frame[have].itertuples(index=False)
    ]


def _csv_lines(path: Path) -> dict[tuple, tuple[int, str]]:
    """(method, bits, config_hash, date) -> (line number, the line as stored) of a results CSV."""
    lines = path.read_text().splitlines()
    out = {}
    if not lines:
        return out
    header = next(csv.reader([lines[0]]))
    for number, text in enumerate(lines[1:], 2):
        if not text.strip():
            continue
        values = dict(zip(header, next(csv.reader([text])), strict=False))  # a short line: its fields
        key = (values.get("method", ""), values.get("bits", ""), values.get("config_hash", ""),
               values.get("date", ""))  # fmt: skip
        out[key] = (number, text)
    return out


def _configs(folder: Path) -> dict[str, dict]:
    path = folder / CONFIGS_NAME
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HashbenchError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if isinstance(record, dict) and record.get("config_hash"):
            out[str(record["config_hash"])] = record
    return out


def best_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Each (method, bits) cell's best row (highest mAP; ties: the earliest date): the leaderboard's rule."""
    rows = rows.sort_values(["map", "date", "method"], ascending=[False, True, True], kind="stable")
    return rows.drop_duplicates(["method", "bits"], keep="first")


def dataset_data(folder: Path, root: Path, dataset: str, frame: pd.DataFrame, slug: str) -> dict:
    """Everything the page of one dataset shows, as JSON-ready data."""
    d = frame[frame["dataset"] == dataset]
    best = best_rows(d)
    order = method_order(best["method"].unique())
    lines = _csv_lines(folder / CSV_NAME)
    configs = _configs(folder)
    rel = folder.relative_to(root).as_posix()
    rows = []
    for rec, (_, r) in zip(_records(best, ROW_COLUMNS), best.iterrows(), strict=True):
        bits = "" if pd.isna(r["bits"]) else str(int(r["bits"]))
        line = lines.get((str(r["method"]), bits, str(r.get("config_hash", "")), str(r["date"])))
        config = configs.get(str(r.get("config_hash", "")))
        rec.update(
            id=f"{r['method']}-{bits or 'ref'}",
            csv_line=line[0] if line else None,
            csv_text=line[1] if line else None,
            config=config.get("config") if config else None,
        )
        rows.append(rec)
    aq_rows: list[dict] = []
    aq = load_attribute_queries(folder, d, dataset)
    if aq is not None and not aq.empty:
        aq_rows = _records(aq, ("method", "bits", "decoder", "n_attributes", "rank1", "rank5", "precision10"))
    paper = []
    if (folder / PAPER_NAME).is_file():
        paper = _records(pd.read_csv(folder / PAPER_NAME), ("method", "bits", "map", "rank1", "source"))
    cmc = []
    if (folder / CMC_NAME).is_file():
        table = pd.read_csv(folder / CMC_NAME, dtype={"config_hash": str, "method": str})
        keys = {(str(r["method"]), str(r.get("config_hash", ""))) for r in rows}
        for _, c in table.iterrows():
            if (str(c["method"]), str(c["config_hash"])) not in keys:
                continue
            ranks = [c[k] for k in table.columns if k.startswith("r") and k[1:].isdigit()]
            cmc.append({"method": c["method"], "bits": _clean(c["bits"]), "cmc": [_clean(x) for x in ranks]})
    heatmaps = sorted(p.name for p in folder.glob("explain_*.png"))
    return {
        "dataset": dataset,
        "title": dataset_title(dataset),
        "folder": rel,
        "slug": slug,
        "methods": order,
        "rows": rows,
        "paper": paper,
        "cmc": cmc,
        "attribute_queries": aq_rows,
        "heatmaps": heatmaps,
    }


def collect(root: Path) -> list[tuple[Path, dict]]:
    """(folder, page data) for every dataset of every results folder under ``root``."""
    root = Path(root)
    files = result_files(root)
    if not files:
        raise HashbenchError(f"site: no {CSV_NAME} under {root}")
    pages = []
    for path in files:
        frame = load_results(path.parent)
        for dataset in sorted(frame["dataset"].unique()):
            parts = list(path.parent.relative_to(root).parts)
            slug = "-".join(parts if parts and parts[-1] == dataset else [*parts, dataset])
            pages.append((path.parent, dataset_data(path.parent, root, dataset, frame, slug)))
    return pages


def _citation(root: Path) -> str:
    for where in (root, *root.resolve().parents):
        if (where / CITATION_NAME).is_file():
            return (where / CITATION_NAME).read_text()
    return ""


def _page(title: str, body: str, data: dict) -> str:
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return PAGE.format(title=html.escape(title), body=body, data=payload, js=SCRIPT, css=STYLE)


def build_site(root: Path, out: Path) -> Path:
    """Write the site of every results folder under ``root`` into ``out``; returns ``out/index.html``."""
    root, out = Path(root), Path(out)
    pages = collect(root)
    js = plotly_js()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(js, out / PLOTLY_JS)
    citation = _citation(root)
    index = []
    for folder, data in pages:
        files = out / data["slug"]
        files.mkdir(exist_ok=True)
        names = [CSV_NAME, PAPER_NAME, CMC_NAME, "attribute_queries.csv", "explain.csv", CONFIGS_NAME]
        data["downloads"] = []
        for name in names:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, files / name)
                data["downloads"].append(f"{data['slug']}/{name}")
        for name in data["heatmaps"]:
            shutil.copyfile(folder / name, files / name)
        data["citation"] = citation
        (out / f"{data['slug']}.html").write_text(
            _page(data["title"], DATASET_BODY, {"page": "dataset", **data})
        )
        keep = ("dataset", "title", "slug", "methods", "paper", "attribute_queries")
        brief = [{k: v for k, v in r.items() if k not in ("config", "csv_text")} for r in data["rows"]]
        index.append({**{k: data[k] for k in keep}, "rows": brief})
    (out / "index.html").write_text(
        _page("hashbench leaderboard", INDEX_BODY, {"page": "index", "datasets": index})
    )
    return out / "index.html"


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;background:#f4f4f4;user-select:none}td:first-child,th:first-child{text-align:left}
td.best{font-weight:bold;background:#e8f4e8}tr.paper td{font-style:italic;color:#666}
.controls label{margin-right:1.2em}.plot{width:100%;height:420px}pre{background:#f7f7f7;padding:.6em;overflow:auto}
details{margin:.2em 0}img.heat{max-width:100%;border:1px solid #ddd;margin:.3em 0}
"""

INDEX_BODY = """
<h1>hashbench leaderboard</h1>
<p>Built by <code>hashbench site</code> from the committed results; every number is a stored row.
Each cell: the best row of a method at a code length (by mAP); <i>italic</i> rows are real-valued
references (not ranked) and published values; bold marks the best hashing method of each column. Click a column head to sort.</p>
<div class="controls">
<label>dataset <select id="f-dataset"></select></label>
<label>metric <select id="f-metric"></select></label>
<label>code length <select id="f-bits"><option value="">all</option></select></label>
</div>
<div id="boards"></div>
"""

DATASET_BODY = """
<p><a href="index.html">&larr; leaderboard</a></p>
<h1 id="title"></h1>
<h2>mAP against code length</h2><div id="plot-map" class="plot"></div>
<h2>CMC</h2><div class="controls"><label>code length <select id="cmc-bits"></select></label></div>
<div id="plot-cmc" class="plot"></div>
<h2>Cost against accuracy</h2>
<div class="controls"><label>code length <select id="cost-bits"></select></label>
<label>cost <select id="cost-axis"><option value="query_ms">query ms</option>
<option value="train_s">train s</option></select></label></div>
<p>Ringed: the Pareto front (no other method both cheaper and more accurate).</p>
<div id="plot-cost" class="plot"></div>
<h2>Search by description</h2><div class="controls"><label>code length <select id="aq-bits"></select></label></div>
<div id="aq"></div>
<h2>Explain heatmaps</h2><div id="heatmaps"></div>
<h2>Rows and provenance</h2><div id="rows"></div>
<h2>Downloads</h2><ul id="downloads"></ul>
<h2>Cite this</h2><pre id="cite"></pre>
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{css}</style><script src="plotly.min.js"></script></head>
<body>{body}
<script type="application/json" id="data">{data}</script>
<script>{js}</script></body></html>
"""

SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "text") e.textContent = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k);
  return e;
};
const fmt = (v, d = 2) => (v === null || v === undefined) ? "" : (typeof v === "number" ? v.toFixed(d) : String(v));
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
const colorOf = (d, m) => d.methods.includes(m) ? COLORS[d.methods.indexOf(m) % COLORS.length] : "#555";
const bitsOf = rows => [...new Set(rows.filter(r => r.bits !== null && r.bits !== undefined).map(r => r.bits))].sort((a, b) => a - b);

function sortable(table) {
  const heads = [...table.querySelectorAll("th")];
  heads.forEach((th, i) => th.addEventListener("click", () => {
    const body = table.tBodies[0], rows = [...body.rows];
    const dir = th.dataset.dir === "desc" ? "asc" : "desc";
    heads.forEach(h => delete h.dataset.dir); th.dataset.dir = dir;
    const val = r => { const c = r.cells[i]; const n = parseFloat(c.dataset.v ?? c.textContent); return isNaN(n) ? c.textContent : n; };
    rows.sort((a, b) => { const x = val(a), y = val(b);
      const c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return dir === "asc" ? c : -c; });
    rows.forEach(r => body.append(r));
  }));
}

function descRank1(d, method, bits) {
  const rows = d.attribute_queries.filter(r => r.method === method && r.bits === bits);
  if (!rows.length) return null;
  const n = Math.max(...rows.map(r => r.n_attributes));
  return Math.max(...rows.filter(r => r.n_attributes === n).map(r => r.rank1));
}

function board(d, metric, bitsFilter) {
  const hashed = d.rows.filter(r => r.bits !== null);
  let bits = bitsOf(hashed);
  if (bitsFilter) bits = bits.filter(b => String(b) === bitsFilter);
  const value = (r, b) => metric === "desc_rank1" ? descRank1(d, r.method, b) : r[metric];
  const cell = (m, b) => hashed.find(r => r.method === m && r.bits === b);
  const lines = d.methods.filter(m => hashed.some(r => r.method === m)).map(m => ({ m, paper: false,
    vals: bits.map(b => { const r = cell(m, b); return r ? { v: value(r, b), id: r.id } : null; }) }));
  if (metric !== "desc_rank1") for (const r of d.rows.filter(r => r.bits === null))
    lines.push({ m: r.method + " (float reference)", paper: true, vals: bits.map(() => r[metric] != null ? { v: r[metric], id: r.id } : null) });
  if (metric !== "desc_rank1") for (const m of [...new Set(d.paper.map(p => p.method))])
    lines.push({ m: m + " (paper)", paper: true,
      vals: bits.map(b => { const p = d.paper.find(q => q.method === m && q.bits === b); return p && p[metric] != null ? { v: p[metric] } : null; }) });
  const best = bits.map((_, j) => Math.max(...lines.filter(l => !l.paper).map(l => l.vals[j] && l.vals[j].v != null ? l.vals[j].v : -Infinity)));
  const t = el("table", { class: "board", "data-dataset": d.dataset });
  t.append(el("thead", {}, el("tr", {}, el("th", { text: "method" }), ...bits.map(b => el("th", { text: b + " bits" })))));
  const body = el("tbody");
  for (const l of lines) {
    const tr = el("tr", l.paper ? { class: "paper" } : {}, el("td", { text: l.m }));
    l.vals.forEach((c, j) => {
      const td = el("td", c && c.v != null ? { "data-v": c.v } : {});
      if (c && c.v != null) {
        if (c.id) td.append(el("a", { href: `${d.slug}.html#row-${c.id}`, text: fmt(c.v) })); else td.textContent = fmt(c.v);
        if (!l.paper && c.v === best[j]) td.classList.add("best");
      }
      tr.append(td);
    });
    body.append(tr);
  }
  t.append(body); sortable(t);
  return t;
}

function indexPage() {
  const fd = document.getElementById("f-dataset"), fm = document.getElementById("f-metric"), fb = document.getElementById("f-bits");
  fd.append(el("option", { value: "", text: "all" }));
  DATA.datasets.forEach(d => fd.append(el("option", { value: d.slug, text: d.title })));
  Object.entries({ map: "mAP", rank1: "rank-1", desc_rank1: "description rank-1 (full description)" })
    .forEach(([k, v]) => fm.append(el("option", { value: k, text: v })));
  const all = [...new Set(DATA.datasets.flatMap(d => bitsOf(d.rows)))].sort((a, b) => a - b);
  all.forEach(b => fb.append(el("option", { value: String(b), text: String(b) })));
  const draw = () => {
    const out = document.getElementById("boards"); out.replaceChildren();
    for (const d of DATA.datasets) {
      if (fd.value && fd.value !== d.slug) continue;
      out.append(el("h2", {}, el("a", { href: `${d.slug}.html`, text: d.title + " (" + d.slug + ")" })));
      out.append(board(d, fm.value, fb.value));
    }
  };
  [fd, fm, fb].forEach(s => s.addEventListener("change", draw));
  draw();
}

function rowText(r) {
  return `${r.method} ${r.bits ?? "(reference)"} bits: mAP ${fmt(r.map)}, rank-1 ${fmt(r.rank1)}<br>commit ${r.commit}, config ${r.config_hash}, seed ${r.seed}, ${r.device}, ${r.date}`;
}

function datasetPage() {
  const d = DATA;
  document.title = d.title + " - hashbench";
  document.getElementById("title").textContent = `${d.title} (${d.folder || "."})`;
  const hashed = d.rows.filter(r => r.bits !== null), bits = bitsOf(hashed);
  const refs = d.rows.filter(r => r.bits === null);
  const layout = (x, y, extra = {}) => Object.assign({ margin: { t: 20 }, xaxis: { title: { text: x } }, yaxis: { title: { text: y } }, hovermode: "closest" }, extra);
  const traces = d.methods.filter(m => hashed.some(r => r.method === m)).map(m => {
    const rs = hashed.filter(r => r.method === m).sort((a, b) => a.bits - b.bits);
    return { name: m, x: rs.map(r => r.bits), y: rs.map(r => r.map), mode: "lines+markers", line: { color: colorOf(d, m) }, text: rs.map(rowText), hovertemplate: "%{text}<extra></extra>" };
  });
  for (const r of refs) traces.push({ name: r.method + " (float)", x: [bits[0], bits[bits.length - 1]], y: [r.map, r.map], mode: "lines", line: { dash: "dot", color: "#555" }, text: [rowText(r), rowText(r)], hovertemplate: "%{text}<extra></extra>" });
  Plotly.newPlot("plot-map", traces, layout("code length (bits)", "mAP (%)", { xaxis: { type: "log", tickvals: bits, title: { text: "code length (bits)" } } }), { responsive: true });

  const fill = (id, values) => { const s = document.getElementById(id); values.forEach(b => s.append(el("option", { value: String(b), text: String(b) }))); s.value = String(values[values.length - 1]); return s; };
  const cmcSel = fill("cmc-bits", bits);
  const drawCmc = () => {
    const b = Number(cmcSel.value);
    const tr = d.cmc.filter(c => c.bits === b || c.bits === null).map(c => ({ name: c.method + (c.bits === null ? " (float)" : ""), x: c.cmc.map((_, i) => i + 1), y: c.cmc.map(v => 100 * v), mode: "lines",
      line: c.bits === null ? { dash: "dot", color: "#555" } : { color: colorOf(d, c.method) },
      hovertemplate: `${c.method}: rank %{x}, %{y:.2f}%<extra></extra>` }));
    Plotly.react("plot-cmc", tr, layout("rank", "matching rate (%)"), { responsive: true });
  };
  cmcSel.addEventListener("change", drawCmc); drawCmc();

  const costSel = fill("cost-bits", bits), axis = document.getElementById("cost-axis");
  const drawCost = () => {
    const b = Number(costSel.value), key = axis.value;
    const rs = hashed.filter(r => r.bits === b && r[key] != null && r.map != null);
    const front = rs.filter(r => !rs.some(o => o !== r && o[key] <= r[key] && o.map >= r.map && (o[key] < r[key] || o.map > r.map)));
    const tr = [{ name: "cells", x: rs.map(r => r[key]), y: rs.map(r => r.map), mode: "markers+text", text: rs.map(r => r.method), textposition: "top center",
      customdata: rs.map(rowText), hovertemplate: "%{customdata}<extra></extra>", marker: { size: 9, color: rs.map(r => colorOf(d, r.method)) } },
      { name: "Pareto front", x: front.map(r => r[key]), y: front.map(r => r.map), mode: "markers", hoverinfo: "skip", marker: { size: 18, color: "rgba(0,0,0,0)", line: { width: 2, color: "#2ca02c" } } }];
    Plotly.react("plot-cost", tr, layout(key === "query_ms" ? "query ms" : "train s", "mAP (%)", { xaxis: { type: "log", title: { text: key === "query_ms" ? "query ms (log)" : "train s (log)" } } }), { responsive: true });
  };
  costSel.addEventListener("change", drawCost); axis.addEventListener("change", drawCost); drawCost();

  const aqBits = bitsOf(d.attribute_queries);
  if (aqBits.length) {
    const aqSel = fill("aq-bits", aqBits);
    const drawAq = () => {
      const b = Number(aqSel.value);
      const rows = d.attribute_queries.filter(r => r.bits === b || r.method === "oracle");
      const ns = [...new Set(rows.map(r => r.n_attributes))].sort((x, y) => x - y);
      const pairs = [...new Set(rows.map(r => r.method + "\u0000" + r.decoder))];
      pairs.sort((x, y) => (x.startsWith("oracle") ? 1 : 0) - (y.startsWith("oracle") ? 1 : 0));
      const t = el("table", { id: "aq-table" });
      t.append(el("thead", {}, el("tr", {}, el("th", { text: "method" }), el("th", { text: "decoder" }), ...ns.map(n => el("th", { text: "n=" + n })))));
      const body = el("tbody");
      for (const p of pairs) {
        const [m, dec] = p.split("\u0000");
        const tr = el("tr", m === "oracle" ? { class: "paper" } : {}, el("td", { text: m }), el("td", { text: dec }));
        ns.forEach(n => { const r = rows.find(q => q.method === m && q.decoder === dec && q.n_attributes === n); tr.append(el("td", r ? { "data-v": r.rank1, text: fmt(r.rank1) } : {})); });
        body.append(tr);
      }
      t.append(body); sortable(t);
      document.getElementById("aq").replaceChildren(t, el("p", { text: "Rank-1 (%) when querying with n attributes; the oracle row ranks by the true attributes (the ceiling)." }));
    };
    aqSel.addEventListener("change", drawAq); drawAq();
  } else document.getElementById("aq").textContent = "No search-by-description rows.";

  const heat = document.getElementById("heatmaps");
  if (!d.heatmaps.length) heat.textContent = "No explain heatmaps in this folder.";
  for (const h of d.heatmaps) heat.append(el("details", {}, el("summary", { text: h }), el("img", { class: "heat", src: `${d.slug}/${h}`, alt: h })));

  const rows = document.getElementById("rows");
  for (const r of d.rows) {
    const det = el("details", { id: "row-" + r.id }, el("summary", { text: `${r.method} ${r.bits ?? "(reference)"}: mAP ${fmt(r.map)}, rank-1 ${fmt(r.rank1)}, commit ${r.commit}, ${r.date}` }));
    det.append(el("p", { text: `config ${r.config_hash}, seed ${r.seed}, device ${r.device}, version ${r.version}, results.csv line ${r.csv_line ?? "?"}` }));
    if (r.csv_text) det.append(el("pre", { text: r.csv_text }));
    det.append(el("pre", { text: r.config ? JSON.stringify(r.config, null, 2) : "(no recorded config)" }));
    rows.append(det);
  }
  const target = location.hash && document.getElementById(location.hash.slice(1));
  if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
  const dl = document.getElementById("downloads");
  d.downloads.forEach(p => dl.append(el("li", {}, el("a", { href: p, download: "", text: p }))));
  document.getElementById("cite").textContent = d.citation || "(no CITATION.cff found)";
}

if (DATA.page === "index") indexPage(); else datasetPage();
"""
