"""Text to vectors: tokenizer, token-budget batching, the HF and vLLM encoders, pooling, post-processing."""
