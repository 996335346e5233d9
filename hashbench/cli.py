"""Command line: ``hashbench list | run | report | leaderboard | site | serve | explain | show | query | scale | cascade``.

Library code logs; this module prints. A :class:`HashbenchError` becomes one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from dataclasses import fields
from pathlib import Path

from .checks import check_bits, check_writable_dir, check_writable_file
from .errors import HashbenchError

# powers of two up to 32768, the longest under the longest code length (hashbench.search.MAX_BITS)
POWERS = [2**k for k in range(3, 16)]


def parse_bits(text: str) -> list[int]:
    """``128-2048`` (powers of two in that range), ``64,128`` (a list) or ``512``; multiples of 8."""
    text = text.strip()
    try:
        if "-" in text:
            lo, hi = (int(t) for t in text.split("-", 1))
            if lo not in POWERS or hi not in POWERS or lo > hi:
                raise ValueError
            return [b for b in POWERS if lo <= b <= hi]
        bits = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise HashbenchError(
            f"--bits {text!r}: expected a range of powers of two like 128-2048, a list like 64,128, or one value"
        ) from None
    bad = [b for b in bits if b <= 0 or b % 8]
    if not bits or bad:
        raise HashbenchError(
            f"--bits {text!r}: code lengths must be positive multiples of 8 (got {bad or 'none'})"
        )
    check_bits(bits)  # at most hashbench.search.MAX_BITS: Hamming distances are counted in uint16
    return sorted(set(bits))


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(t) for t in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise HashbenchError(f"--input-size {text!r}: expected HEIGHTxWIDTH, e.g. 256x128") from None
    return h, w


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_params(items: list[str], prefix_required: bool = True, option: str = "--param") -> dict:
    """``method.key=value`` items -> {method: {key: value}} (or {key: value} without prefixes)."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise HashbenchError(f"{item!r}: expected key=value")
        if prefix_required:
            method, dot, name = key.partition(".")
            if not dot:
                who, example = (
                    ("DECODER", "logistic.C=0.2")
                    if option == "--decoder-param"
                    else ("METHOD", "itq.n_iter=20")
                )
                raise HashbenchError(f"{option} {item!r}: expected {who}.KEY=VALUE, e.g. {example}")
            out.setdefault(method, {})[name] = _value(value)
        else:
            out[key] = _value(value)
    return out


def cmd_list(args) -> int:
    from .registry import Registry

    reg = Registry.load()
    kinds = (("methods", reg.methods), ("datasets", reg.datasets), ("backbones", reg.backbones))
    for kind, table in (*kinds, ("decoders", reg.decoders)):
        print(f"{kind}:")
        for name, klass in sorted(table.items()):
            origin = klass.__module__.split(".")[0]
            print(f"  {name:<14} {klass.description}  [{origin}]")
    return 0


def run_config_of_args(args):
    """The :class:`~hashbench.pipeline.RunConfig` of parsed ``hashbench run`` arguments (checked)."""
    from .ide import IDEConfig
    from .runner import RunConfig

    ide_fields = {f.name for f in fields(IDEConfig)}
    ide_opts = parse_params(args.ide, prefix_required=False)
    bad = [k for k in ide_opts if k not in ide_fields]
    if bad:
        raise HashbenchError(f"--ide {bad[0]}: unknown option; valid: {', '.join(sorted(ide_fields))}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise HashbenchError("--methods: give at least one method (see `hashbench list`)")
    if args.data_root is not None and not Path(args.data_root).exists():
        raise HashbenchError(f"--data-root {args.data_root}: no such file or directory")
    if args.holdout < 0:
        raise HashbenchError(f"--holdout {args.holdout}: expected a number of training identities (0: off)")
    if args.holdout_distractors < 0 or (args.holdout_distractors and not args.holdout):
        raise HashbenchError(
            f"--holdout-distractors {args.holdout_distractors}: expected a number of training identities, "
            "with --holdout N"
        )
    return RunConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        dataset_options=parse_params(args.dataset_option, prefix_required=False),
        methods=methods,
        bits=parse_bits(args.bits),
        backbone=args.backbone,
        weights=args.weights,
        cut=args.cut,
        input_size=parse_size(args.input_size) if args.input_size else None,
        ide=IDEConfig(**ide_opts),
        method_params=parse_params(args.param),
        seed=args.seed,
        device=args.device,
        out=Path(args.out) if args.out else None,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        search_backend=args.search,
        finetune=args.finetune,
        shared_top=args.shared_top,
        engine=args.engine,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_cpus_per_cell=args.ray_cpus_per_cell,
        holdout=args.holdout,
        holdout_distractors=args.holdout_distractors,
        reference=not args.no_reference,
        attribute_queries=not args.no_attribute_queries,
        decoders=parse_decoders(args.decoders),
        decoder_params=parse_params(args.decoder_param, option="--decoder-param"),
        photo_description=not args.no_photo_description,
        photo_description_alphas=args.photo_description_alphas,
        progress=not args.no_progress,
    )


def cmd_run(args) -> int:
    from .report import write_report
    from .runner import run

    config = run_config_of_args(args)
    out = config.results_dir()
    t0 = time.perf_counter()
    run(config)
    print(f"\nresults: {out / 'results.csv'}  (wall time {time.perf_counter() - t0:.1f} s)\n")
    print(write_report(out).markdown)
    return 0


def _one_length(text: str, option: str) -> int:
    bits = parse_bits(text)
    if len(bits) != 1:
        raise HashbenchError(f"{option} {text}: expected one code length")
    return bits[0]


def cmd_report(args) -> int:
    from .report import write_report

    if args.out:
        check_writable_dir(args.out, "--out")
    report = write_report(
        args.results,
        out_dir=Path(args.out) if args.out else None,
        cmc_bits=tuple(parse_bits(args.cmc_bits)),
        paper=args.paper,
        aq_bits=_one_length(args.aq_bits, "--aq-bits") if args.aq_bits else None,
        alpha_from=args.alpha_from,
    )
    print(report.markdown)
    print("written: " + ", ".join(sorted(str(p) for p in report.values())))
    return 0


def cmd_leaderboard(args) -> int:
    from . import leaderboard

    if args.check:
        diff = leaderboard.check(Path(args.root), Path(args.out) if args.out else None)
        page = args.out or str(Path(args.root) / leaderboard.PAGE_NAME)
        if diff is not None:
            print(diff)
            raise HashbenchError(
                f"{page} differs from the results under {args.root}: run `hashbench leaderboard {args.root}`"
            )
        print(f"{page} matches the results under {args.root}")
        return 0
    if args.out:
        check_writable_file(args.out, "--out")
    print(f"written: {leaderboard.write(Path(args.root), Path(args.out) if args.out else None)}")
    return 0


def cmd_site(args) -> int:
    from . import site

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise HashbenchError(f"--out {out}: exists and is not a directory")
    print(f"written: {site.build_site(Path(args.root), out)}")
    return 0


def parse_decoders(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise HashbenchError("--decoders: give at least one decoder (see `hashbench list`)")
    return names


def cmd_describe(args) -> int:
    from .describe import describe_results
    from .report import write_report

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    bits = parse_bits(args.bits) if args.bits else None
    if bits is not None and len(bits) != 1:
        raise HashbenchError(f"--bits {args.bits}: expected one code length")
    counts = describe_results(
        args.results,
        methods,
        bits[0] if bits else None,
        parse_decoders(args.decoders),
        photo_description=not args.no_photo_description,
        decoder_params=parse_params(args.decoder_param, option="--decoder-param"),
    )
    print(write_report(args.results).markdown)
    print("written: " + ", ".join(f"{k} {v} rows" for k, v in counts.items()))
    return 0


def cmd_pick_alpha(args) -> int:
    from .report import pick_alpha

    if args.out:
        check_writable_file(args.out, "--out")
    configs = [h for h in (args.config or "").split(",") if h.strip()] or None
    path = pick_alpha(args.validation, args.out, configs)
    print(path.read_text())
    print(f"written: {path}")
    return 0


def cmd_explain(args) -> int:
    from .explain import write_explain

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    bits = parse_bits(args.bits) if args.bits else None
    if bits is not None and len(bits) != 1:
        raise HashbenchError(f"--bits {args.bits}: expected one code length")
    if args.out:
        check_writable_dir(args.out, "--out")
    _, written = write_explain(args.results, methods, bits[0] if bits else None, args.out)
    print(written["md"].read_text())
    print("written: " + ", ".join(sorted(str(p) for p in written.values())))
    return 0


def cmd_query(args) -> int:
    from .query import run_query

    bits = parse_bits(args.bits)
    if len(bits) != 1:
        raise HashbenchError(f"--bits {args.bits}: expected one code length")
    if args.data_root is not None and not Path(args.data_root).exists():
        raise HashbenchError(f"--data-root {args.data_root}: no such file or directory")
    if args.out:
        check_writable_file(args.out, "--out")
    if args.cache_dir and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise HashbenchError(f"--cache-dir {args.cache_dir}: is a file, not a folder")
    if args.image is not None or args.device != "cpu":
        from .features import resolve_device

        resolve_device(args.device)
    result = run_query(
        dataset=args.dataset,
        method=args.method,
        bits=bits[0],
        attributes=args.attributes,
        image=args.image,
        alpha=args.alpha,
        decoder=args.decoder,
        top=args.top,
        results_dir=args.results,
        out=args.out,
        data_root=args.data_root,
        dataset_options=parse_params(args.dataset_option, prefix_required=False),
        weights=args.weights,
        cache_dir=args.cache_dir,
        device=args.device,
    )
    print(result.format())
    print(f"\nwritten: {result.png}")
    return 0


def cmd_serve(args) -> int:
    from .serve import SearchService, serve

    bits = parse_bits(args.bits)
    if len(bits) != 1:
        raise HashbenchError(f"--bits {args.bits}: expected one code length")
    if args.data_root is not None and not Path(args.data_root).exists():
        raise HashbenchError(f"--data-root {args.data_root}: no such file or directory")
    if not 0 < args.port < 65536:
        raise HashbenchError(f"--port {args.port}: expected 1..65535")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise HashbenchError(
            "hashbench serve needs starlette and uvicorn: pip install -e '.[serve]'"
        ) from None
    if args.device != "cpu":
        from .features import resolve_device

        resolve_device(args.device)
    service = SearchService(
        dataset=args.dataset,
        method=args.method,
        bits=bits[0],
        results_dir=args.results,
        data_root=args.data_root,
        dataset_options=parse_params(args.dataset_option, prefix_required=False),
        weights=args.weights,
        cache_dir=args.cache_dir,
        device=args.device,
    )
    serve(service, host=args.host, port=args.port)
    return 0


def cmd_show(args) -> int:
    import json
    import re

    from .configs import find_config
    from .results import ResultStore

    folder, record = find_config(args.config_hash, Path(args.results))
    print(f"# {folder / 'configs.jsonl'}: {record['config_hash']}")
    # short lists (a layout's [start, stop], an input size) on one line
    print(
        re.sub(
            r"\[\s+([^\[\]{}]*?)\s+\]",
            lambda m: "[" + " ".join(m[1].split()) + "]",
            json.dumps(record, indent=2, sort_keys=True),
        )
    )
    rows = [r.values for r in ResultStore(folder).rows() if r.config_hash == record["config_hash"]]
    print(f"\n# rows of {folder / 'results.csv'} with this config_hash: {len(rows)}")
    for row in rows:
        print(json.dumps(row, indent=2))
    return 0


def parse_cell_methods(text: str, example: str) -> list[str]:
    """``--method a,b`` of a command over finished cells (``scale``, ``cascade``)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise HashbenchError(f"--method {text!r}: expected method names, e.g. {example}")
    return methods


def add_cell_arguments(s: argparse.ArgumentParser, method_help: str) -> None:
    """RESULTS, ``--method`` and ``--bits`` of a command over finished cells (``scale``, ``cascade``)."""
    s.add_argument("results", help="results directory (with results.csv and the cells/ artifacts)")
    s.add_argument("--method", required=True, help=method_help)
    s.add_argument("--bits", required=True, help="the cells' code lengths: 128,2048, 128-2048 or 512")


def cmd_scale(args) -> int:
    from .scale import (
        DEFAULT_DISTRACTORS,
        MAP_PNG,
        QUERY_PNG,
        SCALE_NAME,
        ScaleConfig,
        parse_distractors,
        run_scale,
    )

    bits = parse_bits(args.bits)
    methods = parse_cell_methods(args.method, "deepssh,sdh")
    sizes = parse_distractors(args.distractors or DEFAULT_DISTRACTORS)
    if args.k < 1:
        raise HashbenchError(f"--k {args.k}: expected a positive number of neighbours")
    if args.search_queries is not None and args.search_queries < 1:
        raise HashbenchError(f"--search-queries {args.search_queries}: expected a positive number of queries")
    if args.data_root is not None and not Path(args.data_root).exists():
        raise HashbenchError(f"--data-root {args.data_root}: no such file or directory")
    if args.out:
        check_writable_dir(args.out, "--out")
    if args.engine not in ("torch", "onnxruntime"):
        raise HashbenchError(f"--engine {args.engine!r}: expected torch or onnxruntime")
    if args.engine != "torch":
        from .engines import check_engine

        check_engine(args.engine, args.device)
    if args.device != "cpu":
        from .features import resolve_device

        resolve_device(args.device)
    frame = run_scale(
        ScaleConfig(
            results=Path(args.results),
            methods=methods,
            bits=bits,
            distractors=sizes,
            backends=None if args.backend == "auto" else args.backend.split(","),
            seed=args.seed,
            k=args.k,
            out=Path(args.out) if args.out else None,
            data_root=args.data_root,
            dataset_options=parse_params(args.dataset_option, prefix_required=False),
            weights=args.weights,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            device=args.device,
            progress=not args.no_progress,
            cache_codes=not args.no_cache_codes,
            search_queries=args.search_queries,
            engine=args.engine,
        )
    )
    from tabulate import tabulate

    cols = [
        "method",
        "bits",
        "distractors",
        "gallery_size",
        "map",
        "rank1",
        "backend",
        "build_s",
        "query_ms",
        "recall",
        "identical",
        "memory_bytes",
    ]
    print(tabulate(frame[cols].values.tolist(), headers=cols, tablefmt="github", floatfmt=".3f"))
    out = Path(args.out or args.results)
    print(f"\nwritten: {out / SCALE_NAME}, {out / MAP_PNG}, {out / QUERY_PNG}")
    return 0


def cmd_cascade(args) -> int:
    from .cascade import CASCADE_NAME, TABLE_NAME, CascadeConfig, parse_top_ks, run_cascade, table_cascade

    methods = parse_cell_methods(args.method, "ctf,dbh")
    if args.out:
        check_writable_dir(args.out, "--out")
    out = Path(args.out or args.results)
    frame = run_cascade(
        CascadeConfig(
            results=Path(args.results),
            methods=methods,
            bits=parse_bits(args.bits),
            top_ks=parse_top_ks(args.top_k),
            ratio=args.ratio,
            backend=args.backend,
            repeats=args.repeats,
            out=out,
        )
    )
    print(table_cascade(frame))
    print(f"written: {out / CASCADE_NAME}, {out / TABLE_NAME}")
    return 0


def add_dataset_arguments(s: argparse.ArgumentParser, root_help: str, option_help: str) -> None:
    s.add_argument("--dataset", default="synthetic", help="dataset plugin name (default: synthetic)")
    s.add_argument("--data-root", help=root_help)
    s.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help=option_help)


def add_decoder_param(parser: argparse.ArgumentParser) -> None:
    """``--decoder-param`` (of ``run`` and ``describe``)."""
    parser.add_argument(
        "--decoder-param",
        action="append",
        default=[],
        metavar="DECODER.KEY=VALUE",
        help="a decoder hyperparameter, e.g. logistic.C=0.2 (its rows are then named logistic(C=0.2)); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hashbench", description="Benchmark hashing methods for person re-id.")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging; the traceback of an error (for bug reports)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list the registered methods, datasets and backbones")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("run", help="train and evaluate methods × code lengths; append rows to results.csv")
    add_dataset_arguments(s, "dataset folder or distribution zip", "dataset option, repeatable")
    s.add_argument("--methods", default="lsh,itq", help="comma-separated method names (default: lsh,itq)")
    s.add_argument(
        "--bits", default="128-2048", help="code lengths: 128-2048, 64,128 or 512 (default 128-2048)"
    )
    s.add_argument(
        "--param", action="append", metavar="METHOD.KEY=VALUE", help="method hyperparameter, repeatable"
    )
    s.add_argument("--backbone", default="mobilenetv2")
    s.add_argument("--weights", default="imagenet", help="imagenet (default source), a file, a URL, or none")
    s.add_argument(
        "--cut", help="backbone cut between frozen trunk and trainable top (default: the backbone's)"
    )
    s.add_argument("--input-size", help="HEIGHTxWIDTH (default: the dataset's, 256x128 for Market-1501)")
    s.add_argument("--ide", action="append", metavar="KEY=VALUE", help="IDE stage option (epochs, lr, ...)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    s.add_argument("--out", help="results directory (default: results/<dataset>)")
    s.add_argument("--cache-dir", help="feature cache (default: $HASHBENCH_CACHE or ~/.cache/hashbench)")
    s.add_argument(
        "--search", default="auto", choices=("auto", "faiss", "numpy"), help="Hamming search backend"
    )
    s.add_argument(
        "--engine",
        default="auto",
        help="what runs the frozen trunk when maps are extracted: auto (default: onnxruntime on the CPU "
        "where installed, else torch), torch, onnxruntime or openvino (CPU; onnxruntime 2.3-3.9x on 2 cores, "
        "maps equal within float16 rounding, cached apart, recorded in the config)",
    )
    s.add_argument(
        "--finetune",
        default="top",
        choices=("top", "full"),
        help="deep methods: train the top blocks on cached trunk maps (default), or the whole backbone "
        "from pixels (meant for a CUDA device)",
    )
    share = s.add_mutually_exclusive_group()
    share.add_argument(
        "--shared-top",
        dest="shared_top",
        action="store_const",
        const=True,
        default=None,
        help="every deep method: train one top with a hash head per --bits length and take every length's "
        "codes from it (about one length's training for all; the cells' configurations say so). Default: "
        "only the methods that choose it (DeepSSH, chosen on held-out ids), when --bits has 2+ lengths",
    )
    share.add_argument(
        "--no-shared-top",
        dest="shared_top",
        action="store_const",
        const=False,
        help="no deep method shares its top: every length of every method trained alone",
    )
    s.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="N",
        help="validation run for tuning: hold out N training identities as query/gallery (Market-style) "
        "and train on the rest; the test split is not read (default out: results/<dataset>/validation)",
    )
    s.add_argument(
        "--holdout-distractors",
        type=int,
        default=0,
        metavar="D",
        help="with --holdout: D more training identities whose images join the held-out gallery only "
        "(distractors, as the test gallery has; not trained on either)",
    )
    s.add_argument(
        "--no-reference", action="store_true", help="skip the ide-float reference row (and its IDE stage)"
    )
    s.add_argument(
        "--no-attribute-queries",
        action="store_true",
        help="skip the search-by-description evaluation of each cell (attribute_queries.csv)",
    )
    s.add_argument(
        "--decoders",
        default="naive-bayes,logistic",
        help="generic attribute decoders of search by description (default naive-bayes,logistic; a "
        "method's own decoder, e.g. DeepSSH's readout, is evaluated too)",
    )
    s.add_argument(
        "--no-photo-description",
        action="store_true",
        help="skip the photo + description queries of each cell (photo_description.csv)",
    )
    s.add_argument(
        "--photo-description-alphas",
        default="all",
        help="photo + description at every alpha (all, default) or at 0 and the alphas `hashbench "
        "pick-alpha` recorded in OUT/validation (validation: what the report shows, at most 5 of 13 settings)",
    )
    add_decoder_param(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="where the cells are computed: this process (default), or one Ray task per cell "
        "(pip install -e .[ray]; the cache must be on a filesystem every node shares)",
    )
    s.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="--executor ray: the cluster to join (auto, HOST:6379; default: $RAY_ADDRESS, else a new "
        "local cluster on this machine)",
    )
    s.add_argument(
        "--ray-cpus-per-cell",
        type=float,
        default=1.0,
        metavar="N",
        help="--executor ray: CPUs each cell's task declares, and its torch threads (default 1)",
    )
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("report", help="tables (Markdown, LaTeX) and plots from a results CSV or directory")
    s.add_argument("results", help="results.csv or the directory holding it")
    s.add_argument("--out", help="where to write tables and plots (default: beside the CSV)")
    s.add_argument("--cmc-bits", default="2048,128", help="code lengths to draw CMC curves for")
    s.add_argument("--paper", help="CSV of published rows (method, bits, map) to compare against")
    s.add_argument(
        "--aq-bits", help="code length of the attribute-query table and plot (default: the longest)"
    )
    s.add_argument(
        "--alpha-from",
        help="photo + description: the alpha choice of `hashbench pick-alpha` (file or validation folder; "
        "default: RESULTS/validation/photo_description_alpha.csv)",
    )
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "describe",
        help="search by description again for finished cells, from their artifacts (every decoder, the oracle)",
    )
    s.add_argument("results", help="results directory (with results.csv and the cells/ artifacts)")
    s.add_argument("--methods", help="comma-separated methods (default: every hash method in the results)")
    s.add_argument("--bits", help="one code length (default: every length in the results)")
    s.add_argument("--decoders", default="naive-bayes,logistic", help="generic decoders (default: both)")
    s.add_argument("--no-photo-description", action="store_true", help="skip photo + description")
    add_decoder_param(s)
    s.set_defaults(func=cmd_describe)

    s = sub.add_parser(
        "pick-alpha", help="photo + description: choose alpha on a validation (--holdout) run and record it"
    )
    s.add_argument("validation", help="the validation results folder (e.g. results/market1501/validation)")
    s.add_argument("--out", help="file to write (default: VALIDATION/photo_description_alpha.csv)")
    s.add_argument(
        "--config",
        help="config-hash prefixes (comma-separated, 4+ hex digits): choose on those cells only "
        "(default: the latest row per method and length)",
    )
    s.set_defaults(func=cmd_pick_alpha)

    s = sub.add_parser("leaderboard", help="LEADERBOARD.md from every committed results.csv under a folder")
    s.add_argument("root", nargs="?", default="results", help="folder to scan (default: results)")
    s.add_argument("--out", help="page to write or check (default: ROOT/LEADERBOARD.md)")
    s.add_argument("--check", action="store_true", help="fail when the page differs from the CSVs (for CI)")
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("site", help="a static site (opens from file://) of every results folder under ROOT")
    s.add_argument("root", nargs="?", default="results", help="folder to scan (default: results)")
    s.add_argument("--out", default="site", help="folder to write the site into (default: site)")
    s.set_defaults(func=cmd_site)

    s = sub.add_parser("explain", help="which bits carry which attributes; attribute prediction from codes")
    s.add_argument("results", help="results directory (with results.csv and the cells/ artifacts)")
    s.add_argument("--methods", help="comma-separated methods (default: every hash method in the results)")
    s.add_argument("--bits", help="one code length (default: every length in the results)")
    s.add_argument("--out", help="where to write explain.csv, explain.md and the PNGs (default: RESULTS)")
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("show", help="the recorded configuration of a results row, by its config_hash")
    s.add_argument("config_hash", help="a config_hash (or a prefix of at least 4 hex digits)")
    s.add_argument(
        "--results", default="results", help="a results folder, or a folder above several (default: results)"
    )
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("query", help="search a cell's gallery by attribute description and/or a photo")
    add_dataset_arguments(
        s,
        "dataset folder or distribution zip (default: the run's recorded one)",
        "dataset option (default: the run's recorded ones), repeatable",
    )
    s.add_argument("--method", required=True, help="the cell's method")
    s.add_argument("--bits", required=True, help="the cell's code length")
    s.add_argument("--attributes", help='description, e.g. "gender=female,upper_color=red,backpack=yes"')
    s.add_argument("--image", help="a pedestrian photo to search by (with --attributes: both)")
    s.add_argument(
        "--decoder",
        default="naive-bayes",
        help="what scores the description: naive-bayes (default), logistic, or the method's own "
        "(e.g. deepssh-readout)",
    )
    s.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="photo + description: weight of the description (default: the held-out choice of "
        "`hashbench pick-alpha` in RESULTS/validation, else 1, said so)",
    )
    s.add_argument("--top", type=int, default=10, help="number of hits (default 10)")
    s.add_argument("--results", help="results directory (default: results/<dataset>)")
    s.add_argument("--out", help="contact sheet PNG (default: RESULTS/query_<method>_<bits>.png)")
    s.add_argument("--weights", help="backbone weights (default: the run's recorded ones)")
    s.add_argument("--cache-dir", help="the run's feature cache (default: $HASHBENCH_CACHE or ~/.cache/...)")
    s.add_argument("--device", default="cpu", help="auto, cpu or cuda (for --image)")
    s.set_defaults(func=cmd_query)

    s = sub.add_parser("serve", help="a local search page over one fitted cell (description, photo or both)")
    add_dataset_arguments(
        s,
        "dataset folder or distribution zip (default: the run's recorded one)",
        "dataset option (default: the run's recorded ones), repeatable",
    )
    s.add_argument("--method", required=True, help="the cell's method")
    s.add_argument("--bits", required=True, help="the cell's code length")
    s.add_argument("--results", help="results directory (default: results/<dataset>)")
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--weights", help="backbone weights (default: the run's recorded ones)")
    s.add_argument("--cache-dir", help="the run's feature cache (default: $HASHBENCH_CACHE or ~/.cache/...)")
    s.add_argument("--device", default="cpu", help="auto, cpu or cuda (for photo queries)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "scale",
        help="grow cells' galleries with distractor codes of their own methods: mAP and top-k search time",
    )
    add_cell_arguments(s, "the cells' methods, comma-separated (one pass over the distractors)")
    s.add_argument(
        "--distractors",
        default="0,100k,300k,1M",
        help="distractor counts (k = 1,000, M = 1,000,000; default 0,100k,300k,1M)",
    )
    s.add_argument(
        "--backend",
        default="auto",
        help="index backends, comma-separated: flat, faiss-flat, mih, hnsw, ivf (default auto: flat, and mih up to 256 bits)",
    )
    s.add_argument(
        "--k", type=int, default=100, help="neighbours per query of the timed search (default 100)"
    )
    s.add_argument("--seed", type=int, help="seed of the distractors (default: the cell's seed)")
    s.add_argument(
        "--search-queries",
        type=int,
        metavar="N",
        help="queries of the timed top-k search, evenly spaced over the query set (default: all; mAP and "
        "rank-1 always use every query; the rows' n_query says)",
    )
    s.add_argument("--out", help="where scale.csv and the plots go (default: RESULTS)")
    s.add_argument("--data-root", help="dataset folder or zip (default: the run's recorded one)")
    s.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="(default: the run's)")
    s.add_argument("--weights", help="backbone weights (default: the run's recorded ones)")
    s.add_argument("--cache-dir", help="the run's feature cache (default: $HASHBENCH_CACHE or ~/.cache/...)")
    s.add_argument("--device", default="cpu", help="auto, cpu or cuda (encoding the distractors)")
    s.add_argument("--no-progress", action="store_true", help="no progress lines")
    s.add_argument(
        "--engine",
        default="torch",
        help="what runs the networks (the IDE model, a deep method's) on the distractors: torch (default), "
        "or onnxruntime (CPU; about 4x faster; the codes it moves on the test "
        "gallery are counted in every row)",
    )
    s.add_argument(
        "--no-cache-codes",
        action="store_true",
        help="do not keep the distractor codes under the cache (default: kept, so a killed run resumes "
        "and a rerun with other sizes or backends encodes nothing twice)",
    )
    s.set_defaults(func=cmd_scale)

    s = sub.add_parser(
        "cascade",
        help="coarse-to-fine search of finished cells: a prefix ranks the gallery, the full code re-ranks its top k",
    )
    add_cell_arguments(s, "the cells' methods, comma-separated (e.g. ctf,dbh)")
    s.add_argument(
        "--top-k",
        default="100,1000",
        help="candidates the full code re-ranks, comma-separated (default 100,1000)",
    )
    s.add_argument(
        "--ratio",
        type=int,
        default=8,
        help="the prefix is bits / RATIO bits (default 8: CtF's shortest code)",
    )
    s.add_argument(
        "--backend",
        default="auto",
        help="Hamming backend of every search: auto (faiss when installed), faiss, numpy",
    )
    s.add_argument(
        "--repeats", type=int, default=3, help="timed passes per search, the best kept (default 3)"
    )
    s.add_argument("--out", help="where cascade.csv and table_cascade.md go (default: RESULTS)")
    s.set_defaults(func=cmd_cascade)
    return p


def _fail(message: str, verbose: bool) -> int:
    """One line on stderr (after the traceback with ``-v``, for bug reports); exit status 2."""
    if verbose:
        traceback.print_exc()
    print(f"hashbench: error: {' '.join(message.split())}", file=sys.stderr)  # one line, always
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing at INFO
    try:
        return args.func(args)
    except HashbenchError as exc:
        return _fail(str(exc), args.verbose)
    except OSError as exc:  # a user path the checks did not foresee: still one line naming the file
        if exc.filename is None:
            raise
        return _fail(f"{exc.filename}: {exc.strerror or exc}", args.verbose)
    except KeyboardInterrupt:
        print(
            "hashbench: interrupted; finished cells are saved, re-run the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
