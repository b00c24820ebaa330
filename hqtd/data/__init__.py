"""Datasets: label spaces, real on-disk formats, the mini benchmark generator, transforms."""
