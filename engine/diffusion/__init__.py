"""Diffusion math free of models and I/O: noise schedule, x0 conversions, samplers, guidance.

Nothing here imports engine.pipeline or engine.runtime; both build on it.
"""
