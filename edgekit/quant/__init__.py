"""INT4 quantization, backend-neutral: algorithms, recipes, the layer-by-layer pipeline, packers."""

from .pipeline import QuantizedModel, quantize_checkpoint
from .recipe import ALGORITHMS, DEFAULT_RECIPE, Recipe
from .tensor import QuantizedTensor

__all__ = ["ALGORITHMS", "DEFAULT_RECIPE", "QuantizedModel", "QuantizedTensor", "Recipe", "quantize_checkpoint"]
