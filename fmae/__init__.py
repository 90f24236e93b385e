"""fmae: the engine for training and studying facial-behaviour models (FMAE / FMAE-IAT)."""

__version__ = "0.1.0"
