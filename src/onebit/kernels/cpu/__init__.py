"""C++ CPU backend of the packed ops (AVX-512 / AVX2 / portable), JIT-built on first use."""
from .loader import ISA_NAMES, build_error, load, loaded

__all__ = ["ISA_NAMES", "build_error", "load", "loaded"]
