"""Data layer: corpus readers, tokenizers, packing, per-process sharding, resume (docs/architecture.md: modules)."""
