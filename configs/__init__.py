"""ml_collections configs: model presets, and one file per model x SSA variant (`--config=configs/x.py`)."""
