"""Market-1501 and DukeMTMC-reID readers and Lin et al. attributes, on tiny fixtures built at test time.

The tests marked ``market`` read the real Market-1501 (see the ``market_root`` fixture) and skip without it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hashbench.data import SPLITS, Splits
from hashbench.errors import HashbenchError
from hashbench_datasets._lin_attributes import read_lin_attributes
from hashbench_datasets.dukemtmc import DukeMTMCReID
from hashbench_datasets.market1501 import Market1501

MARKET_TOP = "Market-1501-v15.09.15"
MARKET_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c3s3_077419_04.jpg",
        "0010_c6s4_002427_02.jpg",
    ],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c3s3_064744_00.jpg", "0004_c5s3_066212_00.jpg.jpg"],
    "bounding_box_test": [
        "-1_c1s1_000401_03.jpg",
        "0000_c1s1_000151_01.jpg",
        "0001_c2s1_000301_01.jpg",
        "0003_c1s6_015971_02.jpg",
        "0004_c6s3_089492_03.jpg",
    ],
}
DUKE_TOP = "DukeMTMC-reID"
DUKE_FILES = {
    "bounding_box_train": ["0005_c2_f0046985.jpg", "0005_c5_f0051781.jpg", "0008_c1_f0047502.jpg"],
    "query": ["0001_c2_f0046182.jpg"],
    "bounding_box_test": ["0001_c5_f0051341.jpg", "0006_c8_f0221048.jpg"],
}

# Lin et al. fields (Market-1501): scalar fields and the one-hot colours, in the README's order
MARKET_SCALARS = ("age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender")
MARKET_UP = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
MARKET_DOWN = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
DUKE_SCALARS = ("backpack", "bag", "handbag", "boots", "gender", "hat", "shoes", "top")
DUKE_UP = ("black", "white", "red", "purple", "gray", "blue", "green", "brown")
DUKE_DOWN = ("black", "white", "red", "gray", "blue", "green", "brown")


# -- fixture builders -------------------------------------------------------------------------------------


def write_tree(base: Path, files: dict[str, list[str]]) -> None:
    """Tiny JPEGs named as given (one grayscale), plus the junk a distribution carries."""
    for folder, names in files.items():
        (base / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            mode = "L" if i == 1 else "RGB"
            colour = 40 * i if mode == "L" else (40 * i, 255 - 30 * i, 90)
            Image.new(mode, (8, 16), colour).save(base / folder / name, quality=95)
        (base / folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    (base / "gt_query").mkdir()
    (base / "gt_query" / "0001_c1s1_001051_00_good.mat").write_bytes(b"MATLAB 5.0 MAT-file, fake")
    (base / "readme.txt").write_text("fixture\n")


def zip_tree(folder: Path, zip_path: Path) -> Path:
    """Zip ``folder`` (stored, like the distribution), its name as the top folder; directory entries too."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            arc = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            if path.is_dir():
                zf.writestr(arc + "/", b"")
            else:
                zf.write(path, arc)
    return zip_path


def lin_split(ids, scalars, up, down, up_names, down_names, reverse=False) -> dict:
    """One Lin et al. split struct: fields of shape (1, n) coded 1/2, one-hot colours, ``image_index``.

    ``up``/``down`` hold one colour per identity (a tuple: several "yes", None: none).
    """
    fields: dict[str, np.ndarray] = {}
    for name, codes in scalars.items():
        fields[name] = np.array([codes], dtype=np.uint8)
    for prefix, chosen, names in (("up", up, up_names), ("down", down, down_names)):
        for colour in names:
            yes = [colour == c or (isinstance(c, tuple) and colour in c) for c in chosen]
            fields[prefix + colour] = np.array([[2 if y else 1 for y in yes]], dtype=np.uint8)
    order = list(fields)[::-1] if reverse else list(fields)
    out = {k: fields[k] for k in order}
    index = np.empty((1, len(ids)), dtype=object)
    for i, pid in enumerate(ids):
        index[0, i] = f"{pid:04d}"
    out["image_index"] = index
    return out


def market_mat(path: Path, test_reversed: bool = True) -> Path:
    """A Market-like file: 27 fields; train ids 2, 7, 10 and test ids 1, 3, 4 (test fields reversed)."""
    train = lin_split(
        [2, 7, 10],
        {
            "age": [2, 3, 4],
            "backpack": [1, 2, 1],
            "bag": [1, 1, 2],
            "handbag": [1, 1, 1],
            "clothes": [2, 1, 2],
            "down": [2, 1, 1],
            "up": [2, 1, 2],
            "hair": [1, 2, 1],
            "hat": [1, 1, 2],
            "gender": [1, 2, 1],
        },
        ["red", "white", None],
        ["blue", "pink", ("black", "gray")],
        sorted(MARKET_UP),
        sorted(MARKET_DOWN),
    )
    test = lin_split(
        [1, 3, 4],
        {
            "age": [1, 2, 3],
            "backpack": [2, 1, 1],
            "bag": [1, 1, 1],
            "handbag": [2, 1, 1],
            "clothes": [2, 2, 1],
            "down": [1, 2, 1],
            "up": [1, 2, 2],
            "hair": [2, 1, 1],
            "hat": [1, 1, 1],
            "gender": [2, 1, 2],
        },
        ["yellow", "green", "black"],
        ["brown", "black", "purple"],
        MARKET_UP,
        MARKET_DOWN,
        reverse=test_reversed,
    )
    scipy.io.savemat(path, {"market_attribute": {"test": test, "train": train}})
    return path


def duke_mat(path: Path) -> Path:
    """A Duke-like file: 23 fields, train ids 5, 8 and test ids 1, 6; a zero ``top`` code as in the real one."""
    train = lin_split(
        [5, 8],
        {
            "backpack": [2, 1],
            "bag": [1, 1],
            "handbag": [1, 2],
            "boots": [2, 1],
            "gender": [1, 2],
            "hat": [1, 1],
            "shoes": [1, 2],
            "top": [1, 0],
        },
        ["brown", "white"],
        ["red", "black"],
        DUKE_UP,
        DUKE_DOWN,
    )
    test = lin_split(
        [1, 6],
        {
            "gender": [2, 1],
            "top": [2, 1],
            "boots": [1, 1],
            "hat": [2, 1],
            "backpack": [1, 1],
            "bag": [2, 1],
            "handbag": [1, 1],
            "shoes": [2, 1],
        },
        ["purple", "gray"],
        ["green", "brown"],
        DUKE_UP,
        DUKE_DOWN,
        reverse=True,
    )
    scipy.io.savemat(path, {"duke_attribute": {"train": train, "test": test}})
    return path


@pytest.fixture()
def market_folder(tmp_path) -> Path:
    """``<tmp>/extracted/Market-1501-v15.09.15/{query,...}`` with the attribute file inside."""
    inner = tmp_path / "extracted" / MARKET_TOP
    write_tree(inner, MARKET_FILES)
    market_mat(inner / "market_attribute.mat")
    return inner


@pytest.fixture()
def market_zip(tmp_path, market_folder) -> Path:
    """The same tree as a stored zip; its attribute file lies beside the zip, not inside."""
    (market_folder / "market_attribute.mat").rename(tmp_path / "market_attribute.mat")
    zip_path = zip_tree(market_folder, tmp_path / f"{MARKET_TOP}.zip")
    shutil.copy(tmp_path / "market_attribute.mat", market_folder / "market_attribute.mat")
    return zip_path


def pixels(dataset, records) -> list[bytes]:
    return [im.tobytes() for im in dataset.open_images(records)]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- records -------------------------------------------------------------------------------------------------


def test_market_names_are_parsed_and_junk_ignored(market_folder):
    splits = Market1501(market_folder).splits()
    assert tuple(splits) == SPLITS
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "query": 3, "gallery": 5}
    gallery = splits["gallery"]
    assert [(r.pid, r.camid) for r in gallery] == [(-1, 1), (0, 1), (1, 2), (3, 1), (4, 6)]
    assert gallery[0].source == "bounding_box_test/-1_c1s1_000401_03.jpg"
    assert splits["query"][2].source == "query/0004_c5s3_066212_00.jpg.jpg"  # the real data has a few
    assert [r.pid for r in splits["train"]] == [2, 2, 7, 10]
    for records in splits.values():
        assert [r.source for r in records] == sorted(r.source for r in records)
        assert not any("Thumbs" in r.source or "gt_query" in r.source for r in records)
    Splits(splits)  # the runner's container accepts them


def test_zip_and_folders_give_the_same_records_and_pixels(market_folder, market_zip):
    by_zip = Market1501(market_zip)
    by_outer = Market1501(market_folder.parent)  # split folders one level down
    by_inner = Market1501(market_folder)
    splits = by_zip.splits()
    assert splits == by_outer.splits() == by_inner.splits()
    records = [r for split in SPLITS for r in splits[split]]
    images = list(by_zip.open_images(records))
    assert all(im.mode == "RGB" and im.size == (8, 16) for im in images)
    assert [im.tobytes() for im in images] == pixels(by_inner, records)


def test_zip_dataset_pickles_and_reopens(market_zip):
    dataset = Market1501(market_zip)
    query = dataset.splits()["query"]
    before = pixels(dataset, query)
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.splits() == dataset.splits()
    assert pixels(clone, query) == before
    dataset.close()
    assert pixels(dataset, query) == before  # reopened on demand


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_worker_reopens_the_zip(market_zip):
    dataset = Market1501(market_zip)
    records = [r for split in SPLITS for r in dataset.splits()[split]]
    expected = pixels(dataset, records)  # the parent's handle is open now
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=lambda: send.send(pixels(dataset, records)))
    child.start()
    assert receive.poll(30)
    assert receive.recv() == expected
    child.join(10)
    assert pixels(dataset, records) == expected


def test_digest_follows_content(market_folder, market_zip, tmp_path):
    assert Market1501(market_zip).digest() == Market1501(market_zip).digest()
    folder_digest = Market1501(market_folder).digest()
    Image.new("RGB", (8, 16)).save(market_folder / "query" / "0005_c1s1_000001_00.jpg")
    assert Market1501(market_folder).digest() != folder_digest
    changed = zip_tree(market_folder, tmp_path / "changed.zip")
    assert Market1501(changed).digest() != Market1501(market_zip).digest()


def test_duke_names_zip_and_folder(tmp_path):
    inner = tmp_path / "x" / DUKE_TOP
    write_tree(inner, DUKE_FILES)
    zip_path = zip_tree(inner, tmp_path / "DukeMTMC-reID.zip")
    splits = DukeMTMCReID(zip_path).splits()
    assert splits == DukeMTMCReID(inner.parent).splits()
    assert [(r.pid, r.camid) for r in splits["gallery"]] == [(1, 5), (6, 8)]
    assert splits["train"][0].source == "bounding_box_train/0005_c2_f0046985.jpg"
    assert DukeMTMCReID(zip_path).attributes() is None


# -- attributes -------------------------------------------------------------------------------------------


def test_market_attribute_schema(tmp_path):
    table = read_lin_attributes(market_mat(tmp_path / "market_attribute.mat"))
    schema = table.schema
    assert schema.names == (
        "gender", "age", "hair", "sleeve", "lower_length", "lower_type",
        "hat", "backpack", "bag", "handbag", "upper_color", "lower_color",
    )  # fmt: skip
    assert len(schema) == 12
    assert schema.group("gender").values == ("male", "female")
    assert schema.group("age").values == ("young", "teenager", "adult", "old")
    assert schema.group("sleeve").values == ("long", "short") and schema.group("sleeve").fields == ("up",)
    assert schema.group("lower_type").fields == ("clothes",)
    assert schema.group("hat").values == ("no", "yes")
    upper, lower = schema.group("upper_color"), schema.group("lower_color")
    assert upper.values == tuple(sorted(MARKET_UP)) and lower.values == tuple(sorted(MARKET_DOWN))
    assert upper.fields == tuple("up" + c for c in upper.values)
    assert lower.fields == tuple("down" + c for c in lower.values)
    assert sorted(table.pids.tolist()) == [1, 2, 3, 4, 7, 10]


def test_market_attributes_are_aligned_by_field_name(tmp_path):
    table = read_lin_attributes(market_mat(tmp_path / "a.mat", test_reversed=True))
    schema = table.schema
    rows = dict(zip(table.pids.tolist(), table.lookup(table.pids), strict=True))
    assert schema.describe(rows[2]) == (
        "gender=male, age=teenager, hair=short, sleeve=short, lower_length=short, lower_type=pants, hat=no, "
        "backpack=no, bag=no, handbag=no, upper_color=red, lower_color=blue"
    )
    # test struct written with its fields in reverse order
    assert schema.describe(rows[4]) == (
        "gender=female, age=adult, hair=short, sleeve=short, lower_length=long, lower_type=dress, hat=no, "
        "backpack=no, bag=no, handbag=no, upper_color=black, lower_color=purple"
    )
    assert schema.describe(rows[1]).endswith("upper_color=yellow, lower_color=brown")
    # identity 10: no upper colour, two lower colours -> unknown
    assert rows[10][schema.index("upper_color")] == -1 and rows[10][schema.index("lower_color")] == -1
    same = read_lin_attributes(market_mat(tmp_path / "b.mat", test_reversed=False))
    assert same.schema == schema
    assert np.array_equal(same.lookup(table.pids), table.lookup(table.pids))


def test_duke_attribute_schema_and_values(tmp_path):
    table = read_lin_attributes(duke_mat(tmp_path / "duke_attribute.mat"))
    schema = table.schema
    assert schema.names == (
        "gender", "upper_length", "hat", "backpack", "bag", "handbag", "boots", "shoe_color",
        "upper_color", "lower_color",
    )  # fmt: skip
    assert schema.group("upper_length").values == ("short", "long")
    assert schema.group("shoe_color").values == ("dark", "light")
    assert schema.group("upper_color").values == tuple(sorted(DUKE_UP))
    assert schema.group("lower_color").values == tuple(sorted(DUKE_DOWN))
    assert sum(len(g.fields) for g in schema.groups) == 23
    rows = dict(zip(table.pids.tolist(), table.lookup(table.pids), strict=True))
    assert schema.describe(rows[5]) == (
        "gender=male, upper_length=short, hat=no, backpack=yes, bag=no, handbag=no, boots=yes, "
        "shoe_color=dark, upper_color=brown, lower_color=red"
    )
    assert rows[8][schema.index("upper_length")] == -1  # code 0 in the file
    assert schema.describe(rows[1]) == (  # test struct, fields reversed
        "gender=female, upper_length=long, hat=yes, backpack=no, bag=yes, handbag=no, boots=no, "
        "shoe_color=light, upper_color=purple, lower_color=green"
    )


def test_unknown_fields_get_generic_groups(tmp_path):
    split = lin_split(
        [1, 2, 3],
        {"gender": [1, 2, 1], "glasses": [1, 2, 2], "mood": [3, 5, 3]},
        ["red", "blue", "red"],
        ["blue", "blue", "blue"],
        ("red", "blue"),
        ("blue", "grey"),
    )
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"other_attribute": {"train": split}})
    table = read_lin_attributes(path)
    schema = table.schema
    assert schema.names == ("gender", "glasses", "mood", "upper_color", "lower_color")
    assert schema.group("glasses").values == ("no", "yes")
    assert schema.group("mood").values == ("3", "5")
    assert schema.group("upper_color").values == ("blue", "red")
    assert table.lookup(np.array([2]))[0].tolist() == [1, 1, 1, 0, 0]


def test_attributes_are_found_inside_and_beside(market_folder, market_zip, tmp_path):
    assert len(Market1501(market_folder).attributes().schema) == 12  # inside the folder
    assert len(Market1501(market_folder.parent).attributes().schema) == 12  # inside, one level down
    assert len(Market1501(market_zip).attributes().schema) == 12  # beside the zip
    inside_zip = tmp_path / "inside" / "m.zip"
    inside_zip.parent.mkdir()
    zip_tree(market_folder, inside_zip)
    assert len(Market1501(inside_zip).attributes().schema) == 12
    explicit = market_mat(tmp_path / "elsewhere.mat")
    dataset = Market1501(inside_zip, attributes=explicit)
    assert dataset.config()["attributes"] == str(explicit)
    assert dataset.attributes() is not None
    assert Market1501(market_zip, attributes="none").attributes() is None


def test_attributes_join_the_train_ids(market_zip):
    dataset = Market1501(market_zip)
    table = dataset.attributes()
    train_pids = np.unique([r.pid for r in dataset.splits()["train"]])
    assert (table.lookup(train_pids) >= 0).any(axis=1).all()
    gallery = np.array([r.pid for r in dataset.splits()["gallery"]])
    assert (table.lookup(gallery[gallery <= 0]) == -1).all()  # junk and distractors are not annotated


def test_missing_attributes_warn_and_give_none(tmp_path, caplog):
    inner = tmp_path / MARKET_TOP
    write_tree(inner, MARKET_FILES)
    with caplog.at_level(logging.WARNING):
        assert Market1501(inner).attributes() is None
    assert "market_attribute.mat" in caplog.text


# -- errors ---------------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(HashbenchError) as exc:
        Market1501(tmp_path / "nope")
    assert one_line(exc) == f"--data-root {tmp_path / 'nope'}: no such file or directory"
    with pytest.raises(HashbenchError, match="needs --data-root"):
        Market1501()


def test_not_market_folder_or_zip_says_what_is_missing(tmp_path, market_folder):
    (market_folder / "query").rename(market_folder / "queries")
    with pytest.raises(HashbenchError) as exc:
        Market1501(market_folder.parent).splits()
    assert "not a Market-1501 folder: missing query/" in one_line(exc)
    zip_path = zip_tree(market_folder, tmp_path / "partial.zip")
    with pytest.raises(HashbenchError) as exc:
        Market1501(zip_path).splits()
    assert f"--data-root {zip_path}: not a Market-1501 zip: missing query/" in one_line(exc)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HashbenchError) as exc:
        Market1501(empty).splits()
    assert "missing bounding_box_train/, query/, bounding_box_test/" in one_line(exc)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(HashbenchError) as exc:
        Market1501(text)
    assert one_line(exc) == f"--data-root {text}: neither a folder nor a zip file"


def test_no_images_and_bad_names(market_folder):
    for f in (market_folder / "query").iterdir():
        if f.suffix == ".jpg":
            f.unlink()
    with pytest.raises(HashbenchError) as exc:
        Market1501(market_folder).splits()
    assert one_line(exc).endswith("no images in query/")
    Image.new("RGB", (8, 16)).save(market_folder / "query" / "person.jpg")
    with pytest.raises(HashbenchError) as exc:
        Market1501(market_folder).splits()
    assert "query/person.jpg: not a Market-1501 image name (expected PPPP_cCsS_FFFFFF_NN.jpg)" in one_line(
        exc
    )
    with pytest.raises(HashbenchError) as exc:
        DukeMTMCReID(market_folder).splits()  # Market names are not Duke names
    assert "not a DukeMTMC-reID image name (expected PPPP_cC_fFFFFFFF.jpg)" in one_line(exc)


def test_unknown_option(market_folder):
    with pytest.raises(HashbenchError) as exc:
        Market1501(market_folder, atributes="x.mat")
    assert one_line(exc) == "dataset 'market1501': unknown option(s) atributes; valid: attributes"


def test_attribute_file_errors(tmp_path, market_folder):
    with pytest.raises(HashbenchError) as exc:
        Market1501(market_folder, attributes=tmp_path / "none.mat").attributes()
    assert one_line(exc) == f"attributes={tmp_path / 'none.mat'}: no such file"
    with pytest.raises(HashbenchError) as exc:
        read_lin_attributes(tmp_path / "none.mat")
    assert one_line(exc) == f"{tmp_path / 'none.mat'}: no such file"
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"\x00\x01 not a mat file" * 20)
    with pytest.raises(HashbenchError) as exc:
        read_lin_attributes(junk)
    assert one_line(exc).startswith(f"{junk}: not a readable MATLAB .mat file")
    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"x": np.arange(3), "s": {"a": 1}})
    with pytest.raises(HashbenchError) as exc:
        read_lin_attributes(other)
    assert one_line(exc).startswith(f"{other}: not a Lin et al. attribute file")
    no_index = tmp_path / "no_index.mat"
    scipy.io.savemat(
        no_index, {"market_attribute": {"train": {"gender": np.array([[1, 2]], dtype=np.uint8)}}}
    )
    with pytest.raises(HashbenchError) as exc:
        read_lin_attributes(no_index)
    assert "market_attribute.train has no 'image_index'" in one_line(exc)
    v73 = tmp_path / "v73.mat"
    v73.write_bytes(b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM" + bytes(512))
    with pytest.raises(HashbenchError) as exc:
        read_lin_attributes(v73)
    assert "v7.3 (HDF5)" in one_line(exc)


# -- the real Market-1501 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(market_root) -> Market1501:
    return Market1501(market_root)


@pytest.mark.market
def test_real_market_splits(market):
    t0 = time.perf_counter()
    splits = market.splits()
    seconds = time.perf_counter() - t0
    assert {k: len(v) for k, v in splits.items()} == {"train": 12936, "query": 3368, "gallery": 19732}
    assert len({r.pid for r in splits["train"]}) == 751
    gallery_pids = {r.pid for r in splits["gallery"]}
    assert {-1, 0} <= gallery_pids
    assert {r.camid for r in splits["query"]} == {1, 2, 3, 4, 5, 6}
    assert seconds < 30


@pytest.mark.market
def test_real_market_images(market):
    records = market.splits()["query"][:3]
    images = list(market.open_images(records))
    assert all(im.mode == "RGB" and im.size == (64, 128) for im in images)
    assert len(market.digest()) == 16


@pytest.mark.market
def test_real_market_attributes(market):
    table = market.attributes()
    if table is None:
        pytest.skip("market_attribute.mat not found beside or inside the Market-1501 root")
    assert len(table.schema) == 12
    assert len(table.schema.group("upper_color").values) == 8
    assert len(table.schema.group("lower_color").values) == 9
    train_pids = np.unique([r.pid for r in market.splits()["train"]])
    assert len(train_pids) == 751
    assert set(train_pids.tolist()) <= set(table.pids.tolist())
    assert (table.lookup(train_pids)[:, table.schema.index("gender")] >= 0).all()
