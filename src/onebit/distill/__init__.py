"""Quantization-aware knowledge distillation: losses, data, student, trainer, scale-out."""
