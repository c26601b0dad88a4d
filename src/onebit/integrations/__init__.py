"""Integrations with other libraries (transformers: hf.py)."""
