"""Reading trained models and runs: training curves across runs (Fig. 4, `curves`), query-key norms and attention
spikiness (Fig. 2, `norms`), and each token's learned temperature over a text (Fig. 1, `temperatures`)."""
