"""icgd — transformers that learn in context by running gradient descent inside their forward pass."""

__version__ = "0.1.0"

from icgd.errors import ICGDError
from icgd.nets import NetSpec

__all__ = ["ICGDError", "NetSpec", "__version__"]
