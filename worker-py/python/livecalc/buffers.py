"""Zero-copy numpy views over LiveCalc input and output buffers.

A buffer starts with a directory (see ``docs/bus.md``): magic ``LCVIEW01``, layout version,
column count, the chunk's index and row range, the view size, then one 128-byte entry per column
(name, dtype, shape, offset). :func:`inputs` and :func:`outputs` parse it and return numpy arrays
that alias the shared memory itself.

>>> cols = inputs(input_buffer)
>>> ages = cols["policies.age"]            # numpy array, no copy
>>> out = outputs(output_buffer)
>>> out["priced.premium"][:] = ages * 1.5   # written straight into shared memory
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, Iterator, Mapping

import numpy as np

MAGIC = b"LCVIEW01"
LAYOUT_VERSION = 1
FIXED = 64
ENTRY = 128

DTYPES = {1: np.float64, 2: np.float32, 3: np.int64, 4: np.int32, 5: np.uint8}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Chunk:
    index: int
    row_start: int
    row_count: int
    total_rows: int


class View(Mapping[str, np.ndarray]):
    """Columns of one buffer by full name (``"<input or output>.<column>"``)."""

    def __init__(self, buf: np.ndarray, chunk: Chunk, columns: Dict[str, np.ndarray]):
        self.buffer = buf
        self.chunk = chunk
        self._columns = columns

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"view has no column {name!r}; it has {sorted(self._columns)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def table(self, prefix: str) -> Dict[str, np.ndarray]:
        """The columns of one input or output, keyed by their short names."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self._columns.items() if k.startswith(p)}


def _parse(buf: np.ndarray) -> View:
    if buf is None:
        raise ValueError("no buffer")
    raw = memoryview(buf).cast("B") if not isinstance(buf, np.ndarray) else buf
    arr = np.asarray(raw, dtype=np.uint8)
    head = arr[:FIXED].tobytes()
    if len(head) < FIXED or head[:8] != MAGIC:
        raise ValueError("buffer is not a livecalc view (bad magic)")
    version, n = struct.unpack_from("<II", head, 8)
    if version != LAYOUT_VERSION:
        raise ValueError(f"unsupported view layout version {version}")
    index, row_start, row_count, total_rows, view_size = struct.unpack_from("<5Q", head, 16)
    table = arr[FIXED:FIXED + n * ENTRY].tobytes()
    columns: Dict[str, np.ndarray] = {}
    for i in range(n):
        e = table[i * ENTRY:(i + 1) * ENTRY]
        name = e[:64].split(b"\0", 1)[0].decode()
        code, ndim, d0, d1, offset, nbytes = struct.unpack_from("<IIQQQQ", e, 64)
        dtype = np.dtype(DTYPES[code])
        shape = (d0,) if ndim == 1 else (d0, d1)
        if offset + nbytes > arr.size:
            raise ValueError(f"column {name!r} lies outside the buffer")
        columns[name] = arr[offset:offset + nbytes].view(dtype).reshape(shape)
    return View(arr, Chunk(index, row_start, row_count, total_rows), columns)


def inputs(input_buffer: np.ndarray) -> View:
    """Read-only columns of an input buffer."""
    return _parse(input_buffer)


def outputs(output_buffer: np.ndarray) -> View:
    """Writable columns of an output buffer."""
    return _parse(output_buffer)


def build_view(columns: Mapping[str, np.ndarray], chunk: Chunk | None = None) -> np.ndarray:
    """Lay columns out as a view in ordinary memory (for engine unit tests without a supervisor).

    The returned ``uint8`` array has exactly the layout a worker hands to ``runChunk``.
    """
    n = len(columns)
    offset = FIXED + n * ENTRY
    offset = (offset + 63) & ~63
    placed = []
    for name, a in columns.items():
        a = np.ascontiguousarray(a)
        if a.ndim not in (1, 2):
            raise ValueError(f"column {name!r} must be 1-D or 2-D")
        placed.append((name, a, offset))
        offset = (offset + a.nbytes + 63) & ~63
    size = max(offset, FIXED + n * ENTRY)
    # Over-allocate so the view can start on a 64-byte boundary like a real mapping.
    backing = np.zeros(size + 64, dtype=np.uint8)
    start = (-backing.ctypes.data) % 64
    buf = backing[start:start + size]
    rows = next(iter(columns.values())).shape[0] if columns else 0
    chunk = chunk or Chunk(0, 0, rows, rows)
    head = bytearray(FIXED)
    head[:8] = MAGIC
    struct.pack_into("<II5Q", head, 8, LAYOUT_VERSION, n, chunk.index, chunk.row_start,
                     chunk.row_count, chunk.total_rows, size)
    buf[:FIXED] = np.frombuffer(bytes(head), dtype=np.uint8)
    for i, (name, a, off) in enumerate(placed):
        e = bytearray(ENTRY)
        raw = name.encode()
        if not raw or len(raw) > 63:
            raise ValueError(f"column name {name!r} must be 1..63 bytes")
        e[:len(raw)] = raw
        d1 = a.shape[1] if a.ndim == 2 else 1
        struct.pack_into("<IIQQQQ", e, 64, CODES[a.dtype], a.ndim, a.shape[0], d1, off, a.nbytes)
        buf[FIXED + i * ENTRY:FIXED + (i + 1) * ENTRY] = np.frombuffer(bytes(e), dtype=np.uint8)
        buf[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
    return buf
