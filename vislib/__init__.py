"""vislib: reproducible CNN explanation experiments."""

__version__ = "0.1.0"
