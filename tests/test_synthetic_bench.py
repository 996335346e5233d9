"""The shared synthetic bench: its inputs, and that LSH/ITQ land between chance and perfect on it."""

import numpy as np

from hashbench_methods.itq import ITQ
from hashbench_methods.lsh import LSH


def test_bench_provides_every_input(synthetic_bench):
    v = synthetic_bench.view("train", {"features", "maps", "attributes"})
    assert v.features.shape == (len(v), 1280) and v.features.dtype == np.float32
    assert v.maps.shape[1:] == (96, 8, 4) and v.attributes.shape == (len(v), 12)
    assert (v.attributes >= 0).all()  # every training identity is annotated


def test_unsupervised_baselines_are_between_chance_and_perfect(synthetic_bench):
    train = synthetic_bench.view("train")
    lsh = synthetic_bench.score(LSH(bits=64, seed=0).fit(train))
    itq = synthetic_bench.score(ITQ(bits=64, seed=0).fit(train))
    assert 2 < lsh < 90 and 2 < itq < 90
