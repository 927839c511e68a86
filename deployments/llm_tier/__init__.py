"""The LLM tier: span-markup extraction with a chat LLM (vLLM in production), aligned to exact offsets."""
