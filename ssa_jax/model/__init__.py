"""The model: its config, layers, temperatures, attention and kernels, the decoder, parameter utilities."""
