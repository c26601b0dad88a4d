"""Evaluation: perplexity (GPTQ/OneBit convention), zero-shot tasks, agreement with a teacher."""
