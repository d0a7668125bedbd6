"""distill: a distillation and synthetic-data factory."""
__version__ = "0.1.0"
