"""Export of packed checkpoints to other runtimes (GGUF for llama.cpp)."""
