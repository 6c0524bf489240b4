"""Checks on what a client sends, made before the server decodes or stores any of it.

A Flower :class:`~flwr.app.Array` carries its declared ``shape`` and ``dtype`` apart from its
serialised bytes ``data`` (NumPy's ``.npy`` format: a header, then the raw values), and nothing
ties the two together: a reply can declare two images and carry two hundred thousand. Every
size cap the server applies reads the declaration, so :func:`check_array_payload` first makes
the declaration binding: it reads only the ``.npy`` header and refuses an array whose header,
declaration and byte count disagree, or whose declared size exceeds the cap. An array that
passes decodes (``Array.numpy()``) to exactly the declared shape and dtype.

A client's text (an error or refusal reason) reaches the server's log and ``metrics.json``
through :func:`client_text` only: one line of at most :data:`MAX_CLIENT_TEXT` characters, in
which control characters are escaped, so that a reply can neither fill the log nor forge a line
of it. A client's metrics reach the round's means, ``metrics.json`` and the upload files through
:func:`client_metrics` only: at most :data:`MAX_METRICS` of them, each under a short printable
name, each a finite number or a short list of them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array
from flwr.common.constant import SType

__all__ = [
    "MAX_CLIENT_TEXT",
    "MAX_DIMS",
    "MAX_METRICS",
    "MAX_METRIC_NAME",
    "ArrayPayloadError",
    "check_array_payload",
    "client_metrics",
    "client_text",
    "finite_number",
]

#: most characters of a client's text kept in a log line or ``metrics.json`` (before the truncation mark)
MAX_CLIENT_TEXT = 300

#: most dimensions a client's array may declare (NumPy allows 64; the server's arrays have <= 4)
MAX_DIMS = 32

#: longest declared dtype or serialisation name looked at ("float32", "<f4", "numpy.ndarray")
_MAX_NAME = 32

#: dtype kinds a client's array may hold: booleans, integers, floats, complex numbers
_NUMERIC_KINDS = "biufc"

#: most metrics of one reply kept (fedcond's ClientApp sends about 20: its release gate's counts,
#: the set size, the per-class counts, the time spent, epsilon and delta under DP)
MAX_METRICS = 64

#: longest metric name kept (the names reach ``metrics.json``, e.g. as ``client-mean-NAME``)
MAX_METRIC_NAME = 64


def finite_number(value: object) -> bool:
    """Whether ``value`` is an int or float (not a bool) with a finite value."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def client_metrics(metrics: Mapping[str, object], *, max_list: int = 0) -> dict[str, float | list[float]]:
    """The metrics of a reply that the server may keep, in the order the client sent them.

    Kept: the first :data:`MAX_METRICS` entries whose name is at most :data:`MAX_METRIC_NAME`
    printable characters (:func:`client_text` leaves it unchanged) and whose value is a finite
    number, or a list of at most ``max_list`` finite numbers. Anything else is left out, so that
    one reply can neither grow ``metrics.json`` or an upload file without bound nor forge a line
    in them.

    Parameters
    ----------
    metrics : Mapping[str, object]
        The reply's metric record.
    max_list : int
        Longest list value kept (0: none; the per-class counts need ``num_classes``).
    """
    kept: dict[str, float | list[float]] = {}
    for name, value in metrics.items():
        if len(kept) == MAX_METRICS:
            break
        if not isinstance(name, str) or client_text(name, limit=MAX_METRIC_NAME) != name:
            continue
        if finite_number(value):
            kept[name] = value
        elif isinstance(value, list) and len(value) <= max_list and all(finite_number(v) for v in value):
            kept[name] = list(value)
    return kept


def client_text(text: object, *, limit: int = MAX_CLIENT_TEXT) -> str:
    r"""A client-supplied ``text`` as one bounded line for a log or ``metrics.json``.

    Characters that are not printable (newlines, carriage returns, terminal escapes, Unicode
    line separators) are written as their Python escapes (``\n``), so the result is one line;
    beyond ``limit`` characters the rest is cut and the cut is marked with the text's length.

    Parameters
    ----------
    text : object
        The client's text (``str()`` is applied to anything else, e.g. an exception).
    limit : int
        Most characters kept from the escaped text.

    Returns
    -------
    str
        At most ``limit`` characters, plus `` ... [N characters, truncated]`` when cut.

    Examples
    --------
    >>> client_text("refused\nFAKE LOG LINE")
    'refused\\nFAKE LOG LINE'
    >>> client_text("x" * 1000, limit=5)
    'xxxxx ... [1000 characters, truncated]'
    """
    text = str(text)
    pieces: list[str] = []
    used = 0
    for char in text:  # stops after at most limit + 1 characters: every piece is >= 1 long
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            return "".join(pieces) + f" ... [{len(text)} characters, truncated]"
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)


class ArrayPayloadError(ValueError):
    """An array's bytes disagree with its declared shape and dtype, or it declares too many values."""


def _short(text: object) -> str:
    """``text`` for a message: at most :data:`_MAX_NAME` characters, quoted with escapes."""
    return repr(str(text)[:_MAX_NAME])


def _shape_text(shape: tuple[int, ...]) -> str:
    """``shape`` for a message, or its length alone when it is too long or too large to print."""
    if len(shape) > MAX_DIMS or not all(isinstance(d, int) and abs(d) < 2**63 for d in shape):
        return f"<{len(shape)} sizes>"
    return str(shape)


def _declared_dtype(array: Array) -> np.dtype:
    name = array.dtype
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise ArrayPayloadError(f"declared dtype {_short(name)} is not a NumPy dtype name")
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError) as exc:
        raise ArrayPayloadError(f"declared dtype {_short(name)} is not a NumPy dtype name") from exc
    if dtype.kind not in _NUMERIC_KINDS:
        raise ArrayPayloadError(f"declared dtype {_short(name)} is not numeric")
    return dtype


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data offset in ``data``'s ``.npy`` header; the values are not read."""
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ArrayPayloadError(f".npy format version {version} is not read")
    except ArrayPayloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parse failure refuses the array
        raise ArrayPayloadError(f"no readable .npy header ({type(exc).__name__})") from exc
    return tuple(shape), dtype, fp.tell()


def check_array_payload(array: Array, *, max_elements: int) -> None:
    """Refuse ``array`` unless its bytes hold exactly its declared shape and dtype, within the cap.

    Only the declaration and the ``.npy`` header are read; the values are not decoded.

    Parameters
    ----------
    array : Array
        A client's array, as received.
    max_elements : int
        The most values (the product of the declared shape) the array may declare.

    Raises
    ------
    ArrayPayloadError
        With the reason: a serialisation other than NumPy's, a declared shape that is not at
        most :data:`MAX_DIMS` non-negative sizes, more than ``max_elements`` declared values, a
        non-numeric or unknown declared dtype, an unreadable ``.npy`` header, a header whose
        shape or dtype differs from the declaration, or a byte count other than the header's
        plus the declared values'.
    """
    if array.stype != SType.NUMPY:
        raise ArrayPayloadError(f"serialisation {_short(array.stype)} is not {SType.NUMPY!r}")
    shape = array.shape
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ArrayPayloadError(f"declared shape is not a list of at most {MAX_DIMS} sizes >= 0")
    shape = tuple(shape)
    elements = math.prod(shape)  # Python ints: no overflow
    if elements > max_elements:
        raise ArrayPayloadError(f"declared shape {shape} holds {elements} values, over the cap of {max_elements}")
    dtype = _declared_dtype(array)
    data = array.data
    if not isinstance(data, bytes):
        raise ArrayPayloadError("its data is not bytes")
    header_shape, header_dtype, offset = _npy_header(data)
    if header_shape != shape or header_dtype != dtype:
        raise ArrayPayloadError(
            f"its .npy header says shape {_shape_text(header_shape)} of {header_dtype.str}, "
            f"the declaration {shape} of {dtype.str}"
        )
    expected = offset + elements * dtype.itemsize
    if len(data) != expected:
        raise ArrayPayloadError(
            f"it carries {len(data)} bytes where its declared shape {shape} of {dtype.str} takes {expected}"
        )
