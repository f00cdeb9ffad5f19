"""Inkwell inference service: digit predictions, labelled sample uploads, hot-reloading model."""
