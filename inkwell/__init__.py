"""Inkwell: continual-learning digit and cheque-amount recognition with canary rollouts."""

__version__ = "0.1.0"
