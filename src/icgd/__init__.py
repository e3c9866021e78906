"""icgd — transformers that learn in context by running gradient descent inside their forward pass."""

__version__ = "0.1.0"

from icgd.errors import ICGDError


def __getattr__(name: str):  # NetSpec imports torch: loaded on first use, so `icgd --help` starts at once
    if name == "NetSpec":
        from icgd.nets import NetSpec

        return NetSpec
    raise AttributeError(f"module 'icgd' has no attribute {name!r}")


__all__ = ["ICGDError", "NetSpec", "__version__"]
