"""Faults a user can cause: each is one line on stderr naming the option or file, exit status 2, before
any work (nothing here trains or extracts anything); ``-v`` adds the traceback."""

from __future__ import annotations

import logging
import os
import textwrap
import zipfile

import pytest
import scipy.io

from hashbench.cli import main
from hashbench.errors import HashbenchError
from hashbench.registry import AUTOLOAD_ENV

from ..test_datasets import MARKET_FILES, duke_mat, market_mat, write_tree
from ..tiny import OPTIONS


def fails(capsys, argv: list[str], *named: str, verbose: bool = False) -> str:
    """Run the CLI, expect exit 2 and one stderr line naming each of ``named``; returns that line."""
    assert main((["-v"] if verbose else []) + argv) == 2
    err = capsys.readouterr().err
    if verbose:
        assert "Traceback" in err
        err = err.rstrip("\n").splitlines()[-1] + "\n"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hashbench: error: "), err
    for text in named:
        assert text in lines[0], lines[0]
    return lines[0]


def run_args(tmp_path, *extra: str) -> list[str]:
    """A tiny synthetic run (cache and results under ``tmp_path``) plus ``extra``."""
    out = ["--out", str(tmp_path / "res")] if "--out" not in extra else []
    cache = ["--cache-dir", str(tmp_path / "cache")] if "--cache-dir" not in extra else []
    return ["run", *OPTIONS, "--no-progress", "--bits", "16", *out, *cache, *extra]


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    return path


# -- paths ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
def test_run_folder_that_is_a_file(tmp_path, capsys, a_file, option):
    fails(capsys, run_args(tmp_path, option, str(a_file)), option, str(a_file), "is a file")
    fails(capsys, run_args(tmp_path, option, str(a_file / "sub")), option, f"{a_file} is a file")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "res").exists()  # nothing was done


def test_run_folder_not_writable(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: let the check see the folder as others would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if p == locked else real(p, mode))
    line = fails(capsys, run_args(tmp_path, "--out", str(locked / "res")), "--out", "not writable")
    assert f"{locked} is not writable" in line


def test_query_out_that_is_a_folder_or_under_a_file(tmp_path, capsys, a_file):
    base = ["query", "--method", "lsh", "--bits", "16", "--attributes", "gender=female"]
    fails(capsys, [*base, "--out", str(tmp_path)], "--out", str(tmp_path), "is a folder")
    fails(capsys, [*base, "--out", str(a_file / "q.png")], "--out", f"{a_file} is a file")


@pytest.mark.parametrize("command", ["report", "explain", "leaderboard"])
def test_other_outs_under_a_file(tmp_path, capsys, a_file, command):
    results = tmp_path / "res"
    results.mkdir()
    (results / "results.csv").write_text("dataset,method,bits\n")
    fails(capsys, [command, str(results), "--out", str(a_file / "x")], "--out", f"{a_file} is a file")


def test_an_unforeseen_oserror_on_a_path_is_one_line(tmp_path, capsys, monkeypatch):
    from hashbench import cli

    def broken(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.csv"))

    monkeypatch.setattr(cli, "cmd_list", broken)  # the parser picks the command up when main builds it
    fails(capsys, ["list"], str(tmp_path / "x.csv"), "Permission denied")
    assert main(["-v", "list"]) == 2 and "Traceback" in capsys.readouterr().err


def test_verbose_keeps_the_traceback(tmp_path, capsys, a_file):
    fails(capsys, run_args(tmp_path, "--out", str(a_file)), "--out", verbose=True)


# -- options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, says",
    [("cuda:x", "expected auto, cpu, cuda or cuda:N"), ("cuda:7", "cuda:7"), ("gpu", "expected auto")],
)
def test_bad_device(tmp_path, capsys, device, says):
    line = fails(capsys, run_args(tmp_path, "--device", device), "--device", says)
    import torch

    if device == "cuda:7":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        assert ("no CUDA device available" if n == 0 else "no such CUDA device") in line or n > 7


@pytest.mark.parametrize("bits", ["65536", "16,131072", "8-65536"])
def test_bits_over_the_longest_code(tmp_path, capsys, bits):
    fails(capsys, run_args(tmp_path, "--bits", bits), "--bits")


def test_bits_bound_holds_from_python(tmp_path):
    from hashbench.errors import HashbenchError
    from hashbench.runner import run

    from ..tiny import tiny_run_config

    with pytest.raises(HashbenchError, match=r"--bits 65536: code lengths are at most 65528"):
        run(tiny_run_config(tmp_path, bits=[16, 65536]))
    assert not (tmp_path / "cache").exists()


# -- attribute file of another dataset ------------------------------------------------------------------


def test_attribute_file_of_another_dataset(tmp_path, capsys):
    root = tmp_path / "Market-1501-v15.09.15"
    write_tree(root, MARKET_FILES)
    market_mat(root / "market_attribute.mat")
    duke = duke_mat(tmp_path / "duke_attribute.mat")  # ids 5, 8 / 1, 6: the market ids 2, 7, 10 / 1, 3, 4
    argv = [
        "run",
        "--dataset",
        "market1501",
        "--data-root",
        str(root),
        "--dataset-option",
        f"attributes={duke}",
        "--weights",
        "none",
        "--bits",
        "16",
        "--no-progress",
        "--out",
        str(tmp_path / "res"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    line = fails(capsys, argv, str(duke), "only 0 of the 3 training identities", "attributes=PATH")
    assert "market1501" in line
    assert not (tmp_path / "cache").exists()


# -- plugins --------------------------------------------------------------------------------------------


def install(site, module: str, entry_name: str, source: str) -> None:
    """A module and a dist-info declaring it as the `hashbench` entry point ``entry_name``, in ``site``."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[hashbench]\n{entry_name} = {module}\n")


@pytest.fixture()
def bad_plugins(tmp_path, monkeypatch):
    """A broken plugin (raises on import, entry point ``theirs``) and one whose entry-point name is a
    built-in's (``methods``)."""
    site = tmp_path / "site"
    site.mkdir()
    install(site, "theirs_plugin", "theirs", 'raise ImportError("needs libtheirs.so")\n')
    install(
        site,
        "colliding_plugin",
        "methods",
        """
        from hashbench.hookspecs import hookimpl

        @hookimpl
        def hashbench_register_methods():
            return []
        """,
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    return site


def test_list_survives_a_broken_and_a_colliding_plugin(bad_plugins, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  lsh " in out and "  synthetic " in out and "  mobilenetv2 " in out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    broken = [w for w in warnings if "'theirs'" in w]
    taken = [w for w in warnings if "colliding_plugin" in w]
    assert len(broken) == 1 and len(taken) == 1, warnings
    assert "needs libtheirs.so" in broken[0] and f"{AUTOLOAD_ENV}=1" in broken[0]
    assert "\n" not in broken[0] and "\n" not in taken[0]
    assert "taken by hashbench's built-in" in taken[0]


def test_asking_for_the_broken_plugin_says_why(bad_plugins, tmp_path, capsys):
    fails(
        capsys,
        run_args(tmp_path, "--methods", "theirs"),
        "--methods theirs",
        "failed to load",
        "needs libtheirs.so",
    )


def test_switch_turns_the_broken_plugin_off(bad_plugins, monkeypatch, capsys, caplog):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    with caplog.at_level(logging.WARNING):
        assert main(["list"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "  lsh " in capsys.readouterr().out


def test_a_plugin_whose_hook_raises_or_whose_method_name_is_taken(tmp_path, monkeypatch, capsys, caplog):
    site = tmp_path / "site"
    site.mkdir()
    install(
        site,
        "raising_plugin",
        "raising",
        """
        from hashbench.hookspecs import hookimpl

        @hookimpl
        def hashbench_register_methods():
            raise RuntimeError("no licence key")
        """,
    )
    install(
        site,
        "shadow_plugin",
        "shadow",
        """
        from hashbench.hookspecs import hookimpl
        from hashbench_methods.lsh import LSH

        class Shadow(LSH):
            pass

        @hookimpl
        def hashbench_register_methods():
            return [Shadow]
        """,
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with caplog.at_level(logging.WARNING):
        assert main(["list"]) == 0
    assert "hashbench_methods]" in capsys.readouterr().out.split("  lsh ")[1].splitlines()[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any("'raising'" in w and "no licence key" in w and AUTOLOAD_ENV in w for w in warnings)
    assert any("'shadow'" in w and "'lsh' registered twice" in w for w in warnings)
    fails(capsys, run_args(tmp_path, "--methods", "raising"), "--methods raising", "no licence key")


def test_a_zip_member_with_a_bad_crc_is_one_line_naming_it(tmp_path):
    from datasets.market1501 import Market1501

    from ..test_datasets import MARKET_TOP, zip_tree

    inner = tmp_path / "tree" / MARKET_TOP
    write_tree(inner, MARKET_FILES)
    zip_path = zip_tree(inner, tmp_path / f"{MARKET_TOP}.zip")  # stored: the member's bytes lie as written
    data = bytearray(zip_path.read_bytes())
    info = zipfile.ZipFile(zip_path).infolist()
    member = next(i for i in info if i.filename.endswith(".jpg") and "bounding_box_train" in i.filename)
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    data[start + member.compress_size // 2] ^= 0xFF  # one flipped byte: the CRC-32 fails
    zip_path.write_bytes(bytes(data))
    dataset = Market1501(root=zip_path, attributes=None)
    records = [r for r in dataset.splits()["train"] if member.filename.endswith(r.source.rpartition("/")[2])]
    with pytest.raises(HashbenchError) as err:
        list(dataset.open_images(records))
    assert (
        "\n" not in str(err.value)
        and member.filename in str(err.value)
        and "damaged zip member" in str(err.value)
    )


def test_a_damaged_attribute_mat_is_one_line_naming_it(tmp_path):
    from datasets._lin_attributes import read_lin_attributes

    plain = market_mat(tmp_path / "plain.mat")
    path = tmp_path / "market_attribute.mat"  # compressed, as the distributed file is
    scipy.io.savemat(path, scipy.io.loadmat(plain), do_compression=True)
    data = bytearray(path.read_bytes())
    data[300:340] = bytes(40)  # inside the compressed variable
    path.write_bytes(bytes(data))
    with pytest.raises(HashbenchError) as err:
        read_lin_attributes(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_weights_file_with_a_pickle_payload_is_refused_not_executed(tmp_path, capsys):
    import torch

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    weights = tmp_path / "weights.pt"
    torch.save({"features.0.0.weight": Payload()}, weights)
    argv = ["run", "--methods", "lsh", "--bits", "16", "--weights", str(weights), "--out", str(tmp_path / "r"),
            "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--input-size", "64x32", *OPTIONS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(weights) in err and "state dict of tensors" in err
    assert not marker.exists()
