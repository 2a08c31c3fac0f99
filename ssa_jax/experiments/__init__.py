"""The paper's synthetic studies (Section 4): graph next-token, denoising, imbalanced tokens."""
