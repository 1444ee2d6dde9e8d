"""Barron's general robust loss: closed forms, gradients, stability near the special shapes."""

import math

import pytest
import torch

from vislib.errors import ConfigError
from vislib.losses import general_robust_loss

X = torch.linspace(-6.0, 6.0, 49, dtype=torch.float64)
SCALE = 1.7


def closed_form(x: torch.Tensor, alpha: float, c: float) -> torch.Tensor:
    z = (x / c) ** 2
    forms = {
        2.0: 0.5 * z,
        1.0: torch.sqrt(z + 1) - 1,
        0.0: torch.log(0.5 * z + 1),
        -2.0: 2 * z / (z + 4),
        -math.inf: 1 - torch.exp(-0.5 * z),
        math.inf: torch.exp(0.5 * z) - 1,
    }
    if alpha in forms:
        return forms[alpha]
    b = abs(alpha - 2)
    return b / alpha * ((z / b + 1) ** (alpha / 2) - 1)


@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.0, -2.0, -math.inf, math.inf, 0.5, 3.5, -7.0])
def test_matches_closed_forms(alpha):
    expected = closed_form(X, alpha, SCALE)
    assert torch.allclose(general_robust_loss(X, alpha, SCALE), expected, rtol=1e-9, atol=1e-12)
    got32 = general_robust_loss(X.float(), alpha, SCALE)
    assert torch.allclose(got32.double(), expected, rtol=1e-4, atol=1e-6)


def test_charbonnier_is_default():
    x = torch.tensor([-3.0, 0.0, 0.25, 10.0])
    assert torch.allclose(general_robust_loss(x), torch.sqrt(x ** 2 + 1) - 1)


def test_general_formula_is_continuous_at_special_shapes():
    for special, offsets in ((0.0, (1e-4, -1e-4)), (2.0, (1e-4, -1e-4))):
        at = general_robust_loss(X, special, SCALE)
        for offset in offsets:
            near = general_robust_loss(X, special + offset, SCALE)
            assert torch.allclose(near, at, rtol=1e-3, atol=1e-6), (special, offset)
    assert torch.allclose(general_robust_loss(X, -1e4, SCALE), general_robust_loss(X, -math.inf, SCALE), atol=1e-3)


@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.0, -2.0, -math.inf, math.inf, 0.5, 3.5, 1e-9, -1e-9, 1e-6,
                                   2 - 1e-7, 2 + 1e-7, 2 - 1e-4])
def test_gradient_matches_formula_and_is_finite(alpha):
    for dtype in (torch.float32, torch.float64):
        x = torch.cat([X, torch.zeros(1, dtype=torch.float64)]).to(dtype).requires_grad_(True)
        (grad,) = torch.autograd.grad(general_robust_loss(x, alpha, SCALE).sum(), x)
        assert torch.isfinite(grad).all(), (alpha, dtype)
        assert grad[-1] == 0  # x = 0 is the minimum for every shape
        z = (x.detach().double() / SCALE) ** 2
        b = abs(alpha - 2) if math.isfinite(alpha) else math.inf
        if alpha == math.inf:
            expected = x.detach().double() / SCALE ** 2 * torch.exp(0.5 * z)
        elif alpha == -math.inf:
            expected = x.detach().double() / SCALE ** 2 * torch.exp(-0.5 * z)
        elif alpha == 2.0:
            expected = x.detach().double() / SCALE ** 2
        else:
            expected = x.detach().double() / SCALE ** 2 * (z / b + 1) ** (alpha / 2 - 1)
        tol = 1e-4 if dtype == torch.float32 else 1e-8
        if dtype == torch.float32 and 0 < abs(alpha - 2) < 1e-6:
            tol = 1e-2  # |alpha-2| below float32 eps is clamped to eps, as in the reference code
        assert torch.allclose(grad.double(), expected, rtol=tol, atol=tol), (alpha, dtype)


def test_gradient_wrt_alpha_and_scale_is_finite():
    x = torch.cat([X, torch.zeros(1, dtype=torch.float64)]).float()
    for alpha0 in (0.0, 1e-8, 1.0, 2.0, 2 + 1e-8, -3.0):
        alpha = torch.tensor(alpha0, requires_grad=True)
        scale = torch.tensor(1.3, requires_grad=True)
        grads = torch.autograd.grad(general_robust_loss(x, alpha, scale).sum(), (alpha, scale))
        assert all(torch.isfinite(g).all() for g in grads), alpha0


def test_tensor_alpha_broadcasts_like_scalar_calls():
    alphas = torch.tensor([2.0, 1.0, 0.0, -2.0, -math.inf, math.inf, 0.5])
    x = torch.linspace(-3, 3, 5)
    table = general_robust_loss(x[None, :], alphas[:, None], 0.8)
    for row, alpha in zip(table, alphas.tolist(), strict=True):
        assert torch.allclose(row, general_robust_loss(x, alpha, 0.8))


def test_monotone_in_alpha():
    x = torch.linspace(0.1, 5, 20, dtype=torch.float64)
    values = [general_robust_loss(x, a) for a in (-math.inf, -2.0, 0.0, 1.0, 2.0, 4.0, math.inf)]
    for smaller, larger in zip(values, values[1:], strict=False):
        assert (smaller <= larger + 1e-12).all()


def test_bad_parameters_are_rejected():
    with pytest.raises(ConfigError, match="scale"):
        general_robust_loss(torch.ones(3), 1.0, 0.0)
    with pytest.raises(ConfigError, match="alpha"):
        general_robust_loss(torch.ones(3), float("nan"))
