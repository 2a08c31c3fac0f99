"""Data layer: SlimPajama / parquet / jsonl / txt readers, tokenizers, packing, per-process sharding, resume.

Entry points: `tokenizer.load_tokenizer`, `config.data_config`, `pipeline.make_lm_iterator` (streaming, or
grain over pre-tokenized ArrayRecord windows with `format='array_record'`: array_record.py),
`pipeline.sum_over_processes`, `demo.ensure_demo_corpus` / `demo.ensure_demo_tokenizer`,
`token_counts.load_token_feature`, `tfds_builder.build_tokenized`; CLIs `python -m ssa_jax.data.inspect`,
`python -m ssa_jax.data.token_counts` and `python -m ssa_jax.data.tfds_builder`.
"""
