"""The encoded-data cache's file format: integer arrays and JSON, checked by a SHA-256, never code.

The cache lives on a disk others may write to (clusters share the datasets cache), so an entry must be
data that reading cannot turn into a call: a pickle (or `torch.load` without `weights_only`) runs what
the file names. Why this format rather than the usual ones:

- safetensors holds only arrays, with a str -> str metadata table: the rows' structure, QA's windows and
  the examples would need a second file (two files cannot be replaced atomically together) or JSON
  squeezed into the metadata;
- Arrow (pyarrow, through `datasets`) holds columns of lists well, but not what a head's `state` may be
  (tuples, dicts with int keys, mixed nesting) without a second encoding of its own, and importing it
  costs a few tenths of a second at every start;
- JSON alone loses tuples against lists and is slow for millions of token ids.

So: numpy arrays (numpy comes with torch) for every list of integers, as flat values plus offsets as
Arrow lays out lists, and JSON for the rest, with a tag for what JSON cannot say (tuples, dicts whose keys
are not all strings). Reading is one `read_bytes`, a hash and `numpy.frombuffer` (no copy): a
190,000-row split costs milliseconds instead of rebuilding millions of Python objects. Rows come back as
`LazyRows`, which builds a row's dict (of Python ints and lists, as `head.encode` made it) when it is
indexed; the arrays are shared with forked loader workers without a copy-on-write per object.

One file, written with `factory.checkpoints.atomic`:

    MAGIC (16 bytes) | SHA-256 of what follows (32) | header length (8, little endian) | header | arrays

The header is JSON: the format, the entry's key, the arrays' table (dtype, count, offset into the arrays'
region) and both splits as trees that name the arrays. `read_entry` raises `EntryError` for anything that
is not such a file: another magic (a pickle, say), a hash that does not match (one byte changed), a
header or an array table that does not hold together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from factory.contract.task import Encoded

MAGIC = b"factory-encoded\n"  # 16 bytes
FORMAT = "factory-encoded-2"  # bump when what an entry holds, or how, changes
_ALIGN = 8
_DTYPES = ("<i1", "<i2", "<i4", "<i8")  # the only dtypes an entry may name: integers, little endian
_MAX_DEPTH = 4  # lists of lists ... of ints stored as arrays; deeper goes to JSON
_MIN_ARRAY = 16  # shorter lists of ints (inside `state` and `examples`) stay in the JSON


class EntryError(ValueError):
    """The file is not a valid entry (not one, damaged, or for another key)."""


class Unstorable(TypeError):
    """The encoded data holds a value the format does not store (only JSON's types and tuples)."""


# ---- writing ------------------------------------------------------------------------------------------


class _Writer:
    """Collects the arrays while the splits are turned into a JSON tree."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def add(self, values: Any, dtype: Any = None) -> int:
        array = np.asarray(values, dtype=dtype or np.int64)
        if dtype is None:  # the narrowest integer type that holds the values
            for small in _DTYPES[:-1]:
                info = np.iinfo(np.dtype(small))
                if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
                    array = array.astype(small)
                    break
        self.arrays.append(np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<")))
        return len(self.arrays) - 1

    def column(self, values: Sequence[Any]) -> dict[str, Any] | None:
        """`values` (one per item) as arrays when each is an int or a nesting of lists/tuples of ints that
        is the same at every item; None otherwise."""
        levels: list[tuple[list[int], str]] = []
        level = values if isinstance(values, list) else list(values)
        while True:
            types = set(map(type, level))
            if types <= {int}:  # exactly int: a bool stays a bool, in the JSON
                break
            if len(types) != 1 or len(levels) == _MAX_DEPTH or not types <= {list, tuple}:
                return None
            levels.append(([len(v) for v in level], "tuple" if tuple in types else "list"))
            level = list(chain.from_iterable(level))
        try:
            flat = self.add(np.array(level, dtype=np.int64))
        except OverflowError:  # beyond 64 bits: JSON keeps it
            return None
        if not levels:
            return {"$": "ints", "a": flat}
        nested = [
            [self.add(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), np.int64), kind]
            for lengths, kind in levels
        ]
        return {"$": "ragged", "a": flat, "levels": nested}

    def value(self, value: Any) -> Any:
        """`value` as JSON, its longer lists of ints as arrays."""
        if value is None or type(value) in (bool, int, float, str):
            return value
        if type(value) in (list, tuple):
            if len(value) >= _MIN_ARRAY or any(type(v) in (list, tuple) for v in value):
                column = self.column(value)
                if column is not None:
                    return {"$": "column", "n": len(value), "kind": type(value).__name__, "c": column}
            items = [self.value(v) for v in value]
            return items if type(value) is list else {"$": "tuple", "v": items}
        if type(value) is dict:
            if all(type(k) is str for k in value) and "$" not in value:
                return {k: self.value(v) for k, v in value.items()}
            return {"$": "dict", "v": [[self.value(k), self.value(v)] for k, v in value.items()]}
        raise Unstorable(f"a {type(value).__module__}.{type(value).__qualname__} ({value!r:.80})")

    def rows(self, rows: Sequence[Any]) -> Any:
        """Rows of one set of keys as one column per key; anything else as a plain value."""
        keys = tuple(rows[0]) if rows and type(rows[0]) is dict else None
        if (
            keys is None
            or not all(type(k) is str for k in keys)
            or any(type(r) is not dict or tuple(r) != keys for r in rows)
        ):
            return {"$": "value", "v": self.value(list(rows))}
        columns = {}
        for key in keys:
            values = [r[key] for r in rows]
            column = self.column(values)
            columns[key] = column if column is not None else {"$": "values", "v": self.value(values)}
        return {"$": "rows", "n": len(rows), "keys": list(keys), "columns": columns}


def write_entry(path: Path, key: str, splits: Sequence[Encoded]) -> None:
    """Write `splits` to `path` (atomically). Raises `Unstorable` (before writing) for a value the format
    does not store, OSError when the disk refuses."""
    from factory.checkpoints.atomic import atomic_write

    writer = _Writer()
    trees = [
        {"rows": writer.rows(s.rows), "state": writer.value(s.state), "examples": writer.value(s.examples)}
        for s in splits
    ]
    table, offset = [], 0
    for array in writer.arrays:
        offset = -(-offset // _ALIGN) * _ALIGN
        table.append([f"<i{array.dtype.itemsize}", int(array.size), offset])
        offset += array.nbytes
    # ASCII (non-ASCII text as \u escapes): a lone surrogate in a text must not fail the write.
    header = json.dumps({"format": FORMAT, "key": key, "arrays": table, "splits": trees}).encode()
    parts = [len(header).to_bytes(8, "little"), header]
    position = 0
    for array, (_, _, start) in zip(writer.arrays, table):
        parts.append(b"\0" * (start - position))
        parts.append(memoryview(array).cast("B"))
        position = start + array.nbytes
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)

    def dump(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(digest.digest())
            for part in parts:
                f.write(part)

    atomic_write(path, dump)


# ---- reading ------------------------------------------------------------------------------------------


class _Column:
    """One column of `n` values stored as arrays: `get(i)` builds the i-th value, `to_list()` all of them."""

    def __init__(self, flat: np.ndarray, levels: list[tuple[np.ndarray, type]], n: int):
        self.flat, self.levels, self.n = flat, levels, n
        for depth, (offsets, _) in enumerate(levels):
            # The i-th item of this level is entries offsets[i]:offsets[i + 1] of the next one (or of flat).
            inner = len(levels[depth + 1][0]) - 1 if depth + 1 < len(levels) else len(flat)
            outer = n if depth == 0 else int(levels[depth - 1][0][-1])
            if (
                len(offsets) != outer + 1
                or offsets[0] != 0
                or offsets[-1] != inner
                or (len(offsets) > 1 and np.any(offsets[1:] < offsets[:-1]))
            ):
                raise EntryError("its offsets do not hold together")
        if not levels and len(flat) != n:
            raise EntryError(f"a column of {len(flat)} values for {n} items")
        # Rows are indexed one at a time, for every batch: the common shapes get a short path, and the
        # first level's offsets are Python ints (a numpy scalar costs more to index and slice with).
        self._bounds = levels[0][0].tolist() if levels else None
        # `get(i)`: the value of item i (0 <= i < n).
        self.get: Callable[[int], Any] = self._nested
        if not levels:
            self.get = flat.item
        elif len(levels) == 1 and levels[0][1] is list:
            self.get = self._list

    def _nested(self, index: int) -> Any:
        return self._item(0, index)

    def _list(self, index: int) -> list[int]:
        bounds = self._bounds
        return self.flat[bounds[index] : bounds[index + 1]].tolist()

    def _item(self, depth: int, index: int) -> Any:
        offsets, kind = self.levels[depth]
        if depth == 0:
            start, end = self._bounds[index], self._bounds[index + 1]
        else:
            start, end = offsets[index], offsets[index + 1]
        if depth + 1 == len(self.levels):
            values = self.flat[start:end].tolist()
        else:
            values = [self._item(depth + 1, j) for j in range(start, end)]
        return values if kind is list else kind(values)

    def to_list(self) -> list[Any]:
        """All values at once (faster than one by one)."""
        values: list[Any] = self.flat.tolist()
        for offsets, kind in reversed(self.levels):
            bounds = offsets.tolist()
            if kind is tuple:
                values = [tuple(values[a:b]) for a, b in zip(bounds, bounds[1:])]
            else:
                values = [values[a:b] for a, b in zip(bounds, bounds[1:])]
        return values


class LazyRows(Sequence):
    """Encoded rows read from an entry: `rows[i]` is the dict `head.encode` made (Python ints and lists),
    built when it is asked for; equal to a list of the same dicts."""

    def __init__(self, n: int, columns: dict[str, Any]):
        self._n, self._columns = n, columns
        # A column is a `_Column` or a list (values the JSON holds): each has a way to get item i.
        self._getters = [(k, c.get if isinstance(c, _Column) else c.__getitem__) for k, c in columns.items()]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        index = int(index)
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"row {index} of {self._n}")
        return {key: get(index) for key, get in self._getters}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(self._n))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like a list

    def __repr__(self) -> str:
        return f"LazyRows({self._n} rows of {list(self._columns)})"


class _Reader:
    def __init__(self, data: bytes, table: Any, start: int):
        self.arrays: list[np.ndarray] = []
        if not isinstance(table, list):
            raise EntryError("no array table")
        for item in table:
            if not (isinstance(item, list) and len(item) == 3 and item[0] in _DTYPES):
                raise EntryError(f"an array entry {item!r:.80}")
            dtype, count, offset = np.dtype(item[0]), item[1], item[2]
            if not (type(count) is int and type(offset) is int and count >= 0 and offset >= 0):
                raise EntryError(f"an array entry {item!r:.80}")
            if start + offset + count * dtype.itemsize > len(data):
                raise EntryError("an array past the end of the file")
            self.arrays.append(np.frombuffer(data, dtype=dtype, count=count, offset=start + offset))

    def array(self, index: Any) -> np.ndarray:
        if type(index) is not int or not 0 <= index < len(self.arrays):
            raise EntryError(f"no array {index!r:.40}")
        return self.arrays[index]

    def column(self, node: Any, n: int) -> _Column:
        if not isinstance(node, dict) or node.get("$") not in ("ints", "ragged"):
            raise EntryError(f"a column {node!r:.80}")
        levels = []
        for item in node.get("levels", []) if node["$"] == "ragged" else []:
            if not (isinstance(item, list) and len(item) == 2 and item[1] in ("list", "tuple")):
                raise EntryError(f"a column level {item!r:.80}")
            levels.append((self.array(item[0]), list if item[1] == "list" else tuple))
        return _Column(self.array(node.get("a")), levels, n)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.value(v) for v in node]
        if not isinstance(node, dict):
            return node
        tag = node.get("$")
        if tag is None:
            return {k: self.value(v) for k, v in node.items()}
        if tag == "tuple":
            return tuple(self.value(v) for v in node["v"])
        if tag == "dict":
            return {self.value(k): self.value(v) for k, v in node["v"]}
        if tag == "column":
            values = self.column(node["c"], node["n"]).to_list()
            return values if node["kind"] == "list" else tuple(values)
        raise EntryError(f"an unknown tag {tag!r:.40}")

    def rows(self, node: Any) -> Sequence[Any]:
        if isinstance(node, dict) and node.get("$") == "value":
            rows = self.value(node["v"])
            if not isinstance(rows, list):
                raise EntryError("rows that are not a list")
            return rows
        if not (isinstance(node, dict) and node.get("$") == "rows" and type(node.get("n")) is int):
            raise EntryError(f"rows {node!r:.80}")
        n, columns = node["n"], {}
        for key in node["keys"]:
            column = node["columns"][key]
            if isinstance(column, dict) and column.get("$") == "values":
                values = self.value(column["v"])
                if not isinstance(values, list) or len(values) != n:
                    raise EntryError(f"a column of {key!r:.40} that is not {n} values")
                columns[key] = values
            else:
                columns[key] = self.column(column, n)
        return LazyRows(n, columns)


def read_entry(path: Path, key: str) -> list[Encoded]:
    """The splits stored in `path` for `key`. Raises `EntryError` when it is not a valid entry for `key`,
    OSError when it cannot be read."""
    data = path.read_bytes()
    head = len(MAGIC) + 32
    if data[: len(MAGIC)] != MAGIC:
        raise EntryError("not an encoded-data entry (another format, or an older one)")
    if hashlib.sha256(memoryview(data)[head:]).digest() != data[len(MAGIC) : head]:
        raise EntryError("its checksum does not match: the file was changed or damaged")
    length = int.from_bytes(data[head : head + 8], "little")
    try:
        header = json.loads(data[head + 8 : head + 8 + length])
        if header.get("format") != FORMAT or header.get("key") != key:
            raise EntryError(f"an entry of format {header.get('format')!r:.40} for another key")
        reader = _Reader(data, header["arrays"], head + 8 + length)
        splits = [
            Encoded(reader.rows(s["rows"]), reader.value(s["state"]), reader.value(s["examples"]))
            for s in header["splits"]
        ]
    except EntryError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError, RecursionError) as e:
        raise EntryError(f"its header does not hold together ({type(e).__name__}: {e})") from None
    if any(not isinstance(s.examples, list) for s in splits):
        raise EntryError("examples that are not a list")
    return splits
