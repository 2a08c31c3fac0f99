"""Data layer: SlimPajama / parquet / jsonl / txt readers, tokenizers, packing, per-process sharding, resume.

Entry points: `tokenizer.load_tokenizer`, `config.data_config`, `pipeline.make_lm_iterator`,
`demo.ensure_demo_corpus` / `demo.ensure_demo_tokenizer`, `token_counts.load_token_feature`,
`tfds_builder.build_tokenized`; CLIs `python -m ssa_jax.data.inspect` and `python -m ssa_jax.data.token_counts`.
"""
