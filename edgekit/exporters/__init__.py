"""Exporters: quantized checkpoint -> artifact directory for one device."""
