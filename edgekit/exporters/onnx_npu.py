"""The npu flavor lives in exporters/npu/; this module only keeps exporters/pipeline.py's imports
working until they read `from .npu.export import ...`, and then goes."""

from .npu.export import export_npu, npu_options, require_npu

__all__ = ["export_npu", "npu_options", "require_npu"]
