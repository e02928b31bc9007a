"""Reading and writing safetensors files with numpy alone.

Tensors are views into one read-only memory map per file, so a checkpoint is never read whole.
The header is checked against the file before any tensor is handed out: a truncated download
or a header that lies about sizes is reported with the file and tensor names.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError

# safetensors dtype -> (numpy storage dtype, bytes per element). BF16 is stored as uint16 and
# widened to float32 on read.
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "U32": ("<u4", 4),
    "BOOL": ("?", 1),
}
_NUMPY_TO_ST = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint32": "U32",
    "bool": "BOOL",
}

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str  # safetensors spelling
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bf16 bits (uint16)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def read_header(path: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Parse and validate the header of one safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SourceError(f"{path}: not a safetensors file (only {size} bytes); re-download it")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER, size - 8):
            raise SourceError(
                f"{path}: header length {header_len} does not fit in the file ({size} bytes); "
                "the file is truncated or not safetensors; re-download it"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(f"{path}: the safetensors header is not valid JSON ({exc}); re-download it") from None
    if not isinstance(header, dict):
        raise SourceError(f"{path}: the safetensors header is not a JSON object; re-download it")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: dict[str, StoredTensor] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{path}: header entry for tensor '{name}' is malformed; re-download it") from None
        if dtype not in DTYPES:
            raise SourceError(
                f"{path}: tensor '{name}' has dtype {dtype}, which edgekit does not read; "
                f"supported: {', '.join(DTYPES)}"
            )
        expected = math.prod(shape) * DTYPES[dtype][1]
        if end - begin != expected or begin < 0:
            raise SourceError(
                f"{path}: header says tensor '{name}' {list(shape)} {dtype} spans {end - begin} bytes "
                f"but that shape needs {expected}; the header is corrupt; re-download the file"
            )
        if data_start + end > size:
            raise SourceError(
                f"{path}: file is truncated: tensor '{name}' ends at byte {data_start + end} but the file "
                f"has {size} bytes; re-download it"
            )
        tensors[name] = StoredTensor(name, dtype, shape, data_start + begin, data_start + end)
    return tensors, metadata


class SafetensorsFile:
    """One memory-mapped safetensors file."""

    def __init__(self, path: Path):
        self.path = path
        self.tensors, self.metadata = read_header(path)
        self._map: mmap.mmap | None = None

    def raw(self, name: str) -> np.ndarray:
        """The stored array (BF16 as uint16), a read-only view into the memory map."""
        t = self.tensors[name]
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        storage, _ = DTYPES[t.dtype]
        count = (t.end - t.begin) // np.dtype(storage).itemsize
        return np.frombuffer(self._map, dtype=storage, count=count, offset=t.begin).reshape(t.shape)

    def convert(self, name: str, stored: np.ndarray) -> np.ndarray:
        """Stored values (all of `name` or some of its rows) as float32, or as their integer type."""
        dtype = self.tensors[name].dtype
        if dtype == "BF16":
            return bf16_to_f32(stored)
        if dtype in ("F16", "F64"):
            return stored.astype(np.float32)
        return stored

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (floating dtypes) or its integer type; a view when already float32."""
        return self.convert(name, self.raw(name))

    def release(self, name: str) -> None:
        """Drop the mapped pages of `name` from this process (they are read again if used again), so
        reading a model tensor by tensor does not leave all of it resident."""
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        t = self.tensors[name]
        start = t.begin - t.begin % mmap.PAGESIZE
        if t.end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, t.end - start)


def write_safetensors(
    path: Path,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    bf16: frozenset[str] = frozenset(),
) -> None:
    """Write tensors to one safetensors file. Names in `bf16` are stored as BF16."""
    plan = [(n, "BF16" if n in bf16 else _NUMPY_TO_ST[a.dtype.name], tuple(a.shape)) for n, a in tensors.items()]
    write_safetensors_streamed(path, plan, tensors.__getitem__, metadata)


def write_safetensors_streamed(
    path: Path,
    plan: list[tuple[str, str, tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write the tensors of `plan` (name, safetensors dtype, shape) to one file, asking `produce`
    for each one only when its turn comes, so a file bigger than memory can be written."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, dtype, shape in plan:
        size = math.prod(shape) * DTYPES[dtype][1]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, dtype, shape in plan:
            array = produce(name)
            if dtype == "BF16":
                data = f32_to_bf16(array)
            else:
                data = np.ascontiguousarray(array, dtype=np.dtype(DTYPES[dtype][0]))
            if data.shape != tuple(shape):
                raise ValueError(f"tensor '{name}': planned shape {list(shape)}, produced {list(data.shape)}")
            f.write(data.tobytes())
