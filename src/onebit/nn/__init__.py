"""Modules that replace ``nn.Linear``: packed inference forms and trainable forms."""
from .onebit_linear import OneBitLinear, OneBitLinearTrain
from .ste import sign_ste

__all__ = ["OneBitLinear", "OneBitLinearTrain", "sign_ste"]
