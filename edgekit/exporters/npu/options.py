"""The npu graphs' static sizes and EPContext target."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import EdgekitError
from .weight_formats import DEFAULT_FORMAT, FORMATS

DEFAULT_CONTEXT = 1024  # without a profile or --max-context: the KV cache is static, so not the model's
DEFAULT_CHUNK = 64


@dataclass(frozen=True)
class NpuOptions:
    context: int = 512  # KV cache positions (static)
    chunk: int = 64  # prompt tokens per prefill run (static)
    soc_model: str = ""  # QNN soc_model number: also write EPContext models compiled for that SoC
    htp_arch: str = ""  # QNN htp_arch of that SoC (73: Snapdragon X Elite, 75: 8 Gen 3)
    calibration_samples: int = 8
    weight_format: str = DEFAULT_FORMAT  # a name in weight_formats.FORMATS

    @property
    def qnn_options(self) -> dict[str, str]:
        return {k: v for k, v in (("soc_model", self.soc_model), ("htp_arch", self.htp_arch)) if v}


def npu_options(settings, prefill_chunk: int | None, max_context: int | None, context: int) -> NpuOptions:
    """The npu graphs' static sizes and EPContext target from the profile's settings."""
    if not max_context:
        context = min(context, DEFAULT_CONTEXT)
    chunk = min(prefill_chunk or DEFAULT_CHUNK, context)
    fmt = settings.npu_weight_format or DEFAULT_FORMAT
    if fmt not in FORMATS:
        raise EdgekitError(f"npu_weight_format {fmt!r} in the profile's [export] is not one of {', '.join(FORMATS)}")
    return NpuOptions(context, chunk, settings.qnn_soc_model, settings.qnn_htp_arch, weight_format=fmt)
