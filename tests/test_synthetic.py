"""Tests of the embedded synthetic pedestrians dataset (``hashbench_datasets.synthetic``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hashbench.data import AttributeTable, Dataset, Record, Splits
from hashbench.errors import HashbenchError
from hashbench_datasets import hashbench_register_datasets
from hashbench_datasets.synthetic import DEFAULTS, SCHEMA, SyntheticPedestrians

SMALL = {"n_train_ids": 8, "n_test_ids": 10, "images_per_id": 6, "n_cameras": 4}


@pytest.fixture(scope="module")
def small() -> SyntheticPedestrians:
    return SyntheticPedestrians(**SMALL)


def sample(ds: SyntheticPedestrians, per_split: int = 6) -> list[Record]:
    """A few records of every split, distractors and junk included."""
    sp = ds.splits()
    gallery = sp["gallery"]
    picked = sp["train"][:per_split] + sp["query"][:per_split]
    for pid in (-1, 0):
        picked += [r for r in gallery if r.pid == pid][:2]
    return picked + [r for r in gallery if r.pid > 0][:per_split]


def pixels(ds: SyntheticPedestrians, records: list[Record]) -> np.ndarray:
    return np.stack([np.asarray(im) for im in ds.open_images(records)])


# -- the plugin ---------------------------------------------------------------------------------------
def test_plugin_class():
    assert SyntheticPedestrians in hashbench_register_datasets()
    assert issubclass(SyntheticPedestrians, Dataset)
    assert SyntheticPedestrians.name == "synthetic"
    assert SyntheticPedestrians.description and "\n" not in SyntheticPedestrians.description
    assert SyntheticPedestrians.needs_root is False
    assert SyntheticPedestrians.default_input_size == (128, 64)


def test_defaults_need_no_root():
    ds = SyntheticPedestrians()
    assert ds.options == DEFAULTS
    assert ds.config() == {"name": "synthetic", "root": None, **DEFAULTS}


# -- images -------------------------------------------------------------------------------------------
def test_images_are_rgb_128x64(small):
    records = sample(small)
    images = list(small.open_images(records))
    assert len(images) == len(records)
    for im in images:
        assert im.mode == "RGB"
        assert im.size == (64, 128)  # PIL: (width, height)
        assert np.asarray(im).std() > 5  # not a blank canvas


def test_same_seed_same_pixels(small):
    records = sample(small)
    first = pixels(small, records)
    assert np.array_equal(first, pixels(SyntheticPedestrians(**SMALL), records))  # a fresh instance
    assert np.array_equal(first, pixels(small, records[::-1])[::-1])  # order and caches do not matter
    # an image depends on (seed, source) only, not on the size of the set it belongs to
    other = SyntheticPedestrians(n_train_ids=3, n_test_ids=20, images_per_id=9, n_cameras=5)
    assert np.array_equal(pixels(small, records[:3]), pixels(other, records[:3]))


def test_different_seed_different_pixels(small):
    records = sample(small)
    a = pixels(small, records).astype(np.int16)
    b = pixels(SyntheticPedestrians(seed=1, **SMALL), records).astype(np.int16)
    assert all(np.abs(x - y).mean() > 5 for x, y in zip(a, b, strict=True))


def test_images_of_one_identity_differ(small):
    records = [r for r in small.splits()["train"] if r.pid == 1]
    images = pixels(small, records)
    assert len({im.tobytes() for im in images}) == len(records)


def test_bad_source_is_a_user_error(small):
    with pytest.raises(HashbenchError, match="synthetic image key"):
        list(small.open_images([Record("market/0001_c1s1_000151_01.jpg", 1, 1)]))


def test_generation_speed():
    ds = SyntheticPedestrians(**SMALL)
    records = ds.splits()["gallery"]
    list(ds.open_images(records[:5]))  # camera set-up
    start = time.perf_counter()
    n = sum(1 for _ in ds.open_images(records))
    ms = (time.perf_counter() - start) / n * 1000
    print(f"synthetic: {ms:.2f} ms per image")
    assert ms < 25  # about 1.5 ms on 2 idle CPU cores; generous for loaded CI machines


# -- splits -------------------------------------------------------------------------------------------
def test_split_protocol(small):
    sp = small.splits()
    Splits(sp)  # the runner's container accepts it
    ipi, n_cams = SMALL["images_per_id"], SMALL["n_cameras"]
    train_ids = {r.pid for r in sp["train"]}
    test_ids = {r.pid for r in sp["query"]}
    assert train_ids == set(range(1, SMALL["n_train_ids"] + 1))
    assert len(test_ids) == SMALL["n_test_ids"]
    assert not train_ids & test_ids
    assert not train_ids & {r.pid for r in sp["gallery"]}
    assert len(sp["train"]) == SMALL["n_train_ids"] * ipi
    for split in sp.values():
        assert all(1 <= r.camid <= n_cams for r in split)
    sources = [r.source for split in sp.values() for r in split]
    assert len(sources) == len(set(sources))

    gallery_pids = {r.pid for r in sp["gallery"]}
    assert {-1, 0} <= gallery_pids
    assert all(r.pid > 0 for r in sp["query"])
    for pid in test_ids:
        queries = [r for r in sp["query"] if r.pid == pid]
        matches = [r for r in sp["gallery"] if r.pid == pid]
        assert len(queries) + len(matches) == ipi
        assert len(queries) >= 2
        assert len({r.camid for r in queries}) == len(queries)  # one query per camera
        assert {r.camid for r in queries} == {r.camid for r in matches}  # ... it appears in
        for q in queries:
            assert any(g.camid != q.camid for g in matches)  # a match in another camera


def test_splits_cached_and_deterministic(small):
    first = small.splits()
    first["train"].clear()  # callers get copies
    assert small.splits() == SyntheticPedestrians(**SMALL).splits()
    assert small.splits()["train"]
    assert SyntheticPedestrians(seed=1, **SMALL).splits() != small.splits()


def test_default_sizes():
    sp = SyntheticPedestrians().splits()
    total = sum(len(v) for v in sp.values())
    assert 3000 <= total <= 4000
    assert len({r.pid for r in sp["train"]}) == DEFAULTS["n_train_ids"]
    assert {r.camid for r in sp["gallery"]} == set(range(1, DEFAULTS["n_cameras"] + 1))


# -- attributes ---------------------------------------------------------------------------------------
def test_attribute_table_alignment(small):
    table = small.attributes()
    assert isinstance(table, AttributeTable)
    assert table.schema is SCHEMA
    n = SMALL["n_train_ids"] + SMALL["n_test_ids"]
    assert table.pids.tolist() == list(range(1, n + 1))
    assert table.values.shape == (n, len(SCHEMA))
    for j, group in enumerate(SCHEMA.groups):
        assert 0 <= table.values[:, j].min() and table.values[:, j].max() < len(group.values)
    sp = small.splits()
    pids = np.array([r.pid for r in sp["train"] + sp["gallery"]])
    rows = table.lookup(pids)
    assert (rows[pids > 0] >= 0).all()
    assert (rows[pids <= 0] == -1).all()  # distractors and junk are unannotated
    row = table.lookup(np.array([3]))[0]
    assert np.array_equal(row, small.identity(3).codes)
    assert SCHEMA.describe(row).startswith("gender=")


def test_schema_labels():
    assert SCHEMA.names == (
        "gender", "age", "hair", "sleeve", "lower_length", "lower_type",
        "hat", "backpack", "bag", "handbag", "upper_color", "lower_color",
    )  # fmt: skip
    assert SCHEMA.group("gender").values == ("male", "female")
    assert SCHEMA.group("hat").values == ("no", "yes")
    assert len(SCHEMA.group("upper_color").values) == 8
    assert len(SCHEMA.group("lower_color").values) == 9
    assert SCHEMA.parse("gender=female,upper_color=red") == {0: 1, SCHEMA.index("upper_color"): 2}


def test_attribute_priors_are_correlated():
    table = SyntheticPedestrians(n_train_ids=300, n_test_ids=300).attributes()
    v = table.values.astype(int)
    col = {name: v[:, SCHEMA.index(name)] for name in SCHEMA.names}
    female = col["gender"] == 1
    for name in SCHEMA.names:  # every value occurs
        assert len(np.unique(col[name])) == len(SCHEMA.group(name).values), name
    assert (female[col["lower_type"] == 0]).all()  # dresses only on women
    assert col["hair"][female].mean() > 0.5 > col["hair"][~female].mean()
    young = col["age"] <= 1
    assert col["backpack"][young].mean() > 1.5 * col["backpack"][~young].mean()
    assert np.bincount(col["upper_color"]).max() > 3 * np.bincount(col["upper_color"]).min()  # not uniform


def test_attributes_are_visible():
    """Mean colour of the torso / thigh region predicts upper / lower colour (nearest centroid)."""
    ds = SyntheticPedestrians(n_train_ids=100, n_test_ids=1, images_per_id=4, n_cameras=2)
    records = [r for r in ds.splits()["train"] if r.source.endswith(("_000", "_001"))]
    images = pixels(ds, records).astype(np.float32) / 255
    codes = ds.attributes().lookup(np.array([r.pid for r in records]))
    half = len(records) // 2
    for name, rows, cols, floor in (
        ("upper_color", slice(46, 58), slice(26, 38), 0.6),
        ("lower_color", slice(80, 92), slice(24, 40), 0.5),
    ):
        feats = images[:, rows, cols].mean(axis=(1, 2))
        y = codes[:, SCHEMA.index(name)]
        train, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1  # two images of each id
        classes = np.unique(y[train])
        centroids = np.stack([feats[train][y[train] == c].mean(0) for c in classes])
        pred = classes[np.argmin(((feats[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
        accuracy = (pred == y[test]).mean()
        majority = np.bincount(y[test]).max() / test.sum()
        assert accuracy > max(floor, majority + 0.2), (name, accuracy, majority, half)
    lum = images[:, 46:58, 26:38].mean(axis=(1, 2, 3))
    upper = codes[:, SCHEMA.index("upper_color")]
    assert lum[upper == 1].mean() > lum[upper == 0].mean() + 0.2  # white tops are brighter than black ones


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("seed", -1),
        ("seed", "abc"),
        ("n_train_ids", 0),
        ("n_test_ids", 1.5),
        ("n_test_ids", True),
        ("images_per_id", 3),
        ("n_cameras", 1),
        ("n_cameras", None),
    ],
)
def test_option_validation(option, value):
    with pytest.raises(HashbenchError) as err:
        SyntheticPedestrians(**{option: value})
    message = str(err.value)
    assert option in message and "\n" not in message


def test_unknown_option():
    with pytest.raises(HashbenchError, match="n_ids"):
        SyntheticPedestrians(n_ids=3)


def test_string_options_are_coerced():
    ds = SyntheticPedestrians(seed="3", n_cameras="5")
    assert ds.options["seed"] == 3 and ds.options["n_cameras"] == 5
    assert ds.digest() == SyntheticPedestrians(seed=3, n_cameras=5).digest()


def test_digest_follows_options():
    base = SyntheticPedestrians(**SMALL).digest()
    assert len(base) == 16 and int(base, 16) >= 0
    assert base == SyntheticPedestrians(**SMALL).digest()
    changed = {
        SyntheticPedestrians(**{**SMALL, key: value}).digest()
        for key, value in (
            ("seed", 1),
            ("n_train_ids", 9),
            ("n_test_ids", 11),
            ("images_per_id", 7),
            ("n_cameras", 5),
        )
    }
    assert len(changed) == 5 and base not in changed


def test_digest_follows_generator_version(monkeypatch):
    import hashbench_datasets.synthetic as synthetic

    base = SyntheticPedestrians(**SMALL).digest()
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert SyntheticPedestrians(**SMALL).digest() != base
