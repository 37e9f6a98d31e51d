"""Quantization: schemes (which modules are quantized, how many bytes they take)."""
