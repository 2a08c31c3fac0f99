"""Analysis tools: training curves across runs."""
