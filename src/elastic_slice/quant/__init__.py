"""Quantization: schemes and on-disk formats as objects, kernels, calibration, planning, outputs and checks."""
