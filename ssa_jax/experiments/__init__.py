"""The paper's experiments: the synthetic studies of Section 4 (`graph`, `denoise`, `imbalance`, on `common`),
the SSA-vs-vanilla pre-training comparison (`compare/`), and the fine-tune in miniature with its drift
measurement (`finetune_demo`, `finetune_drift`)."""
