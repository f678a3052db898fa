"""Erasure-coded resilience for ML prediction serving on NVIDIA Triton."""
