"""Checkpoints and formats: orbax checkpoints, Hugging Face import / export, safetensors, tokenizer files."""
