"""ssa-jax: Selective Self-Attention (Zhang et al., NeurIPS 2024) in JAX/Flax."""

__version__ = "0.1.0"
