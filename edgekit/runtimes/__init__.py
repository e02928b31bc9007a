"""Runtimes: load an artifact on the device and produce logits (the Runtime protocol)."""
