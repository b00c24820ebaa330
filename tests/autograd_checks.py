"""Shared assertion for comparing a loss with a reference in value and gradients."""

import torch


def assert_same_value_and_grads(got, expected, inputs, value_rtol=1e-10):
    """``got`` equals ``expected`` and so do their gradients w.r.t. ``inputs`` (float64 tests)."""
    torch.testing.assert_close(got, expected, rtol=value_rtol, atol=0)
    for grad, ref in zip(
        torch.autograd.grad(got, inputs, retain_graph=True),
        torch.autograd.grad(expected, inputs, retain_graph=True),
        strict=True,
    ):
        torch.testing.assert_close(grad, ref, rtol=1e-8, atol=1e-12)
