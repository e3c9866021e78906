"""The layer library: one class per equation of the papers, all residual, all ``(B, T, D) → (B, T, D)``."""

from icgd.layers.attention import (FusedSelfAttention, KernelAttention, LinearAttention, ReLUAttention,
                                   SoftmaxAttention, SparseSoftmaxAttention, Visibility, kernel_attention,
                                   softmax_attention)
from icgd.layers.ewml import EWML
from icgd.layers.heads import HeadBank, HeadLayer, RowMap, ValueMap
from icgd.layers.mlp import MLP
from icgd.layers.norm import LayerNorm
from icgd.hooks import ActivationCache, HookPoint
from icgd.layers.transformer import Transformer

__all__ = [
    "ActivationCache", "EWML", "FusedSelfAttention", "HeadBank", "HeadLayer", "HookPoint", "KernelAttention",
    "LayerNorm", "LinearAttention", "MLP", "ReLUAttention", "RowMap", "SoftmaxAttention", "SparseSoftmaxAttention",
    "Transformer", "ValueMap", "Visibility", "kernel_attention", "softmax_attention",
]
