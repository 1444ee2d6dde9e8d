"""Barron's general robust loss (CVPR 2019): one shape parameter spans L2, Charbonnier, Cauchy, Welsch."""

from __future__ import annotations

import math

import torch

from vislib.errors import ConfigError

# Above this, exp() overflows float32; the +inf branch is clamped here (as the reference code does).
_EXPM1_MAX = 87.5


def general_robust_loss(x: torch.Tensor, alpha: float | torch.Tensor = 1.0,
                        scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Elementwise rho(x, alpha, c) = |alpha-2|/alpha * (((x/c)^2/|alpha-2| + 1)^(alpha/2) - 1).

    `alpha` and `scale` broadcast against `x`; alpha may be any real or +-inf (2: L2, 1: Charbonnier,
    0: Cauchy, -2: Geman-McClure, -inf: Welsch). The value and its gradient are finite for every
    finite x and every alpha, including x = 0 and alpha at or near 0 and 2.
    """
    x = torch.as_tensor(x)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    x = x.to(dtype)
    alpha = torch.as_tensor(alpha, dtype=dtype, device=x.device)
    scale = torch.as_tensor(scale, dtype=dtype, device=x.device)
    if not bool((scale > 0).all()):
        raise ConfigError(f"robust loss scale must be > 0, got {scale.min().item()}; use e.g. scale=1.0")
    if bool(torch.isnan(alpha).any()):
        raise ConfigError("robust loss alpha is NaN; use a real number or +-inf")
    z = (x / scale) ** 2
    eps = torch.finfo(dtype).eps

    # Branches that torch.where does not pick still take part in backward (with a zero upstream
    # gradient), and 0 * inf = nan; so the general branch sees a harmless alpha where alpha is
    # infinite, and the exp branch a clamped input.
    infinite = torch.isinf(alpha)
    alpha_finite = torch.where(infinite, torch.ones_like(alpha), alpha)
    beta_safe = torch.clamp(torch.abs(alpha_finite - 2.0), min=eps)
    alpha_safe = torch.where(alpha_finite >= 0, 1.0, -1.0) * torch.clamp(torch.abs(alpha_finite), min=eps)
    # (u + 1)^(a/2) - 1 written as expm1(a/2 * log1p(u)) keeps precision when a is near 0.
    general = (beta_safe / alpha_safe) * torch.expm1(0.5 * alpha_safe * torch.log1p(z / beta_safe))

    loss_l2 = 0.5 * z
    loss_cauchy = torch.log1p(0.5 * z)
    loss_welsch = -torch.expm1(-0.5 * z)
    loss_exp = torch.expm1(torch.clamp(0.5 * z, max=_EXPM1_MAX))
    return torch.where(
        alpha == -math.inf, loss_welsch,
        torch.where(alpha == 0, loss_cauchy,
                    torch.where(alpha == 2, loss_l2,
                                torch.where(alpha == math.inf, loss_exp, general))))

