"""Quantized tensors kept in a scratch folder instead of in memory, so exporting a model never
holds all of its quantized weights at once: codes packed two to a byte, scales and zero points as
float16 (exact: both are float16 values), .npy files per tensor, read back on access; some rows
of one (an embedding lookup, a block of the lm_head) are read without reading the rest."""

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

    def _file(self, index: int, part: str) -> Path:
        return self.folder / f"{index}.{part}.npy"

    def __setitem__(self, name: str, qt: QuantizedTensor) -> None:
        index = self._meta[name][4] if name in self._meta else len(self._meta)
        np.save(self._file(index, "codes"), pack_low_first(qt.codes, qt.bits))
        np.save(self._file(index, "scales"), qt.scales.astype(np.float16))
        if qt.zeros is not None:
            np.save(self._file(index, "zeros"), qt.zeros.astype(np.float16))
        self._meta[name] = (qt.bits, qt.group_size, qt.shape, qt.algorithm, index, qt.codes.shape[1])

    def _read(self, name: str, rows: np.ndarray | None) -> QuantizedTensor:
        bits, group, shape, algorithm, index, width = self._meta[name]
        mode = None if rows is None else "r"  # mapped, when only some rows are wanted

        def load(part: str) -> np.ndarray | None:
            path = self._file(index, part)
            if not path.is_file():
                return None
            array = np.load(path, mmap_mode=mode)
            return array if rows is None else np.array(array[rows])

        codes = unpack_low_first(load("codes"), bits, width)
        zeros = load("zeros")
        n = shape[0] if rows is None else len(codes)
        return QuantizedTensor(
            codes,
            load("scales").astype(np.float32),
            None if zeros is None else zeros.astype(np.float32),
            bits,
            group,
            (n, shape[1]),
            algorithm,
        )

    def __getitem__(self, name: str) -> QuantizedTensor:
        return self._read(name, None)

    def take_rows(self, name: str, rows: np.ndarray) -> QuantizedTensor:
        """Rows `rows` of tensor `name`, reading only those from disk."""
        return self._read(name, np.asarray(rows))

    def __delitem__(self, name: str) -> None:
        index = self._meta.pop(name)[4]
        for part in ("codes", "scales", "zeros"):
            self._file(index, part).unlink(missing_ok=True)

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
