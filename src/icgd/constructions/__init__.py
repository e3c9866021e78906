"""Explicit transformers whose forward pass runs a learning algorithm; one module per paper."""

from icgd.constructions.fits import ReluFit, activation_fits, interpolant
from icgd.constructions.wu import ConstructedICGD, deep_gd, fit_ranges_from_box, fit_ranges_from_data, wu_layout

__all__ = [
    "ConstructedICGD", "ReluFit", "activation_fits", "deep_gd", "fit_ranges_from_box", "fit_ranges_from_data",
    "interpolant", "wu_layout",
]
