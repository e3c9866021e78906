"""Explicit transformers whose forward pass runs a learning algorithm; one module per paper.

* :mod:`~icgd.constructions.wu` — :func:`deep_gd`, GD on an N-layer network (Wu et al., ICML 2025).
* :mod:`~icgd.constructions.wu_softmax` — :func:`deep_gd_softmax`, the same with softmax attention (beyond the
  paper: its Theorem 2 is an existence result).
* :mod:`~icgd.constructions.von_oswald` — :func:`linear_gd`, :func:`gd_plus_plus` (von Oswald et al., ICML 2023).
* :mod:`~icgd.constructions.akyurek` — :func:`ridge`, :func:`akyurek_gd` (Akyürek et al., ICLR 2023).
* :mod:`~icgd.constructions.cheng` — :func:`functional_gd` (Cheng, Chen & Sra, ICML 2024).
* :mod:`~icgd.constructions.bai` — :func:`convex_gd` (Bai et al., NeurIPS 2023).

:mod:`~icgd.constructions.registry` maps each name of ``icgd construct`` to its builder, the reference learner it
is checked against and its options (a new construction: one module, one registry entry, one test).
"""

from icgd.constructions.akyurek import AkyurekTransformer, akyurek_gd, ridge
from icgd.constructions.bai import ConvexGD, convex_gd
from icgd.constructions.base import PromptModel
from icgd.constructions.cheng import FunctionalGD, functional_gd
from icgd.constructions.fits import ReluFit, activation_fits, clamped, interpolant
from icgd.constructions.von_oswald import LinearGD, gd_plus_plus, linear_gd, von_oswald_weights
from icgd.constructions.wu import ConstructedICGD, deep_gd, fit_ranges_from_box, fit_ranges_from_data, wu_layout
from icgd.constructions.wu_softmax import deep_gd_softmax

__all__ = [
    "AkyurekTransformer", "akyurek_gd", "ridge", "ConstructedICGD", "ConvexGD", "FunctionalGD", "LinearGD", "PromptModel", "ReluFit", "activation_fits",
    "clamped", "convex_gd", "deep_gd", "deep_gd_softmax", "fit_ranges_from_box", "fit_ranges_from_data", "functional_gd",
    "gd_plus_plus", "interpolant", "linear_gd", "von_oswald_weights", "wu_layout",
]
