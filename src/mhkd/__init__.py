"""mhkd: compress image classifiers by multi-head knowledge distillation."""

__version__ = "0.1.0"
