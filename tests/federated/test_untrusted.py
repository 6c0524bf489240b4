"""Array payload checks: a client's declared shape and dtype bind its bytes, read before decoding."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array

from fedcond.federated.untrusted import MAX_CLIENT_TEXT, MAX_DIMS, ArrayPayloadError, check_array_payload, client_text

from .conftest import forged_array

IMAGES = np.zeros((2, 1, 8, 8), np.float32)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any Array is decoded."""

    def refuse(self):
        raise AssertionError("an array was decoded")

    monkeypatch.setattr(Array, "numpy", refuse)


@pytest.mark.parametrize(
    "values",
    [IMAGES, np.asfortranarray(np.zeros((2, 3), np.float32)), np.zeros(0, np.int64), np.array(3.5), np.ones(4, bool)],
    ids=["images", "fortran-order", "empty", "scalar", "booleans"],
)
def test_an_honest_array_passes_without_being_decoded(no_decoding, values):
    check_array_payload(Array(values), max_elements=values.size)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        # the review's case: two images declared, 2,000 carried (the header tells the truth)
        (forged_array(np.zeros((2000, 1, 8, 8), np.float32), shape=(2, 1, 8, 8)), r"header says shape \(2000, 1"),
        # a header forged to match the declaration, with extra bytes after the declared values
        (forged_array(IMAGES, shape=(2, 1, 8, 8), tail=bytes(10_000)), "carries 10640 bytes where"),
        (forged_array(IMAGES, shape=(2, 1, 8, 8), dtype="float64"), "header says shape .* of <f4"),
        (Array(dtype="float32", shape=(2, 1, 8, 8), stype="numpy.ndarray", data=Array(IMAGES).data[:300]),
         "carries 300 bytes where"),
        (Array(dtype="float32", shape=(2, 1, 8, 8), stype="numpy.ndarray", data=b""), "no readable .npy header"),
        (Array(dtype="float32", shape=(2, 1, 8, 8), stype="torch.raw", data=bytes(512)), "serialisation 'torch.raw'"),
        (forged_array(IMAGES, shape=(-2, 1, 8, 8)), "sizes >= 0"),
        (forged_array(IMAGES, shape=(1,) * (MAX_DIMS + 1)), f"at most {MAX_DIMS} sizes"),
        (forged_array(IMAGES, shape=(2, 1, 8, 8), dtype="not-a-dtype\nforged log line"), "not a NumPy dtype name"),
        (forged_array(IMAGES, shape=(2, 1, 8, 8), dtype="U8"), "not numeric"),
    ],
    ids=["more-values-than-declared", "trailing-bytes", "dtype-disagrees", "truncated", "empty", "not-numpy",
         "negative-size", "too-many-dims", "unknown-dtype", "text-dtype"],
)
def test_an_array_whose_bytes_disagree_with_its_declaration_is_refused_undecoded(no_decoding, array, reason):
    with pytest.raises(ArrayPayloadError, match=reason):
        check_array_payload(array, max_elements=10**9)


def test_a_declared_size_over_the_cap_is_refused_and_one_at_the_cap_passes(no_decoding):
    check_array_payload(Array(IMAGES), max_elements=IMAGES.size)
    with pytest.raises(ArrayPayloadError, match=r"holds 128 values, over the cap of 127"):
        check_array_payload(Array(IMAGES), max_elements=IMAGES.size - 1)


def test_a_refusal_reason_stays_one_short_line():
    array = forged_array(IMAGES, shape=(2, 1, 8, 8), dtype="x" * 100_000 + "\n")
    with pytest.raises(ArrayPayloadError) as caught:
        check_array_payload(array, max_elements=10**9)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


# ---------------------------------------------------------------- a client's text
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("policy: train is not served", "policy: train is not served"),
        ("refused\nround 1: node 2 accepted", "refused\\nround 1: node 2 accepted"),
        ("a\r\x1b[2Kb\u2028c\td", "a\\r\\x1b[2Kb\\u2028c\\td"),
        (ValueError("boom\n"), "boom\\n"),
    ],
    ids=["plain", "forged-log-line", "control-characters", "exception"],
)
def test_a_clients_text_becomes_one_line_with_its_control_characters_escaped(text, expected):
    assert client_text(text) == expected


def test_a_long_text_is_cut_at_the_limit_and_marked():
    text = "x" * 5_000_000 + "\nFAKE LOG LINE"
    bounded = client_text(text)
    assert bounded == "x" * MAX_CLIENT_TEXT + f" ... [{len(text)} characters, truncated]"
    assert client_text("x" * MAX_CLIENT_TEXT) == "x" * MAX_CLIENT_TEXT  # at the limit: kept whole
    # the limit counts escaped characters: six newlines take twelve
    assert client_text("\n" * 6, limit=11) == "\\n" * 5 + " ... [6 characters, truncated]"
