"""Command-line parsing: code lengths, sizes, hyperparameters."""

import pytest

from hashbench.cli import parse_bits, parse_params, parse_size
from hashbench.errors import HashbenchError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("128-2048", [128, 256, 512, 1024, 2048]),
        ("16-16", [16]),
        ("64,128", [64, 128]),
        ("512", [512]),
        ("128, 64,64", [64, 128]),
        ("24", [24]),
    ],
)
def test_parse_bits(text, expected):
    assert parse_bits(text) == expected


@pytest.mark.parametrize("text", ["100", "100-2048", "128-100", "2048-128", "abc", "", "0", "-8", "64,12"])
def test_parse_bits_rejects(text):
    with pytest.raises(HashbenchError, match="--bits"):
        parse_bits(text)


def test_parse_size_and_params():
    assert parse_size("256x128") == (256, 128)
    with pytest.raises(HashbenchError, match="--input-size"):
        parse_size("256")
    assert parse_params(["itq.n_iter=20", "itq.max_train=5.5", "lsh.x=true"]) == {
        "itq": {"n_iter": 20, "max_train": 5.5},
        "lsh": {"x": True},
    }
    with pytest.raises(HashbenchError, match="METHOD.KEY=VALUE"):
        parse_params(["n_iter=20"])
