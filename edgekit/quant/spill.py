"""Quantized tensors kept in a scratch folder instead of in memory, so exporting a model never
holds all of its quantized weights at once: codes packed two to a byte, scales and zero points as
float16 (exact: both are float16 values), one file per tensor, read back on access."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import numpy as np

from .packing import pack_low_first, unpack_low_first
from .tensor import QuantizedTensor


class SpilledTensors(MutableMapping[str, QuantizedTensor]):
    def __init__(self, parent: Path | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix=".edgekit-quantized-", dir=parent))
        # name -> bits, group size, shape, algorithm, file index, padded width of the codes
        self._meta: dict[str, tuple[int, int, tuple[int, int], str, int, int]] = {}

    def __setitem__(self, name: str, qt: QuantizedTensor) -> None:
        index = self._meta[name][4] if name in self._meta else len(self._meta)
        arrays = {"codes": pack_low_first(qt.codes, qt.bits), "scales": qt.scales.astype(np.float16)}
        if qt.zeros is not None:
            arrays["zeros"] = qt.zeros.astype(np.float16)
        np.savez(self.folder / f"{index}.npz", **arrays)
        self._meta[name] = (qt.bits, qt.group_size, qt.shape, qt.algorithm, index, qt.codes.shape[1])

    def __getitem__(self, name: str) -> QuantizedTensor:
        bits, group, shape, algorithm, index, width = self._meta[name]
        with np.load(self.folder / f"{index}.npz") as data:
            codes = unpack_low_first(data["codes"], bits, width)
            zeros = data["zeros"].astype(np.float32) if "zeros" in data else None
            return QuantizedTensor(codes, data["scales"].astype(np.float32), zeros, bits, group, shape, algorithm)

    def __delitem__(self, name: str) -> None:
        index = self._meta.pop(name)[4]
        (self.folder / f"{index}.npz").unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> SpilledTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
