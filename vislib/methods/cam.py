"""The CAM family: class activation maps weighted by gradients of the target score."""

from __future__ import annotations

import torch
from torch import nn

from vislib.methods.base import Attribution, AttributionMethod, register
from vislib.methods.hooks import capture_layer, frozen_model


def layer_activation_and_grad(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor,
                              method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation A [N,C,h,w] of `layer`, d score_target / dA, and the logits, in one forward/backward."""
    with frozen_model(model), capture_layer(model, layer) as capture, torch.enable_grad():
        # Parameters are frozen, so the input must carry the graph down to the layer.
        logits = model(images.detach().requires_grad_(True))
        activation = capture.spatial(layer, method)
        # Images are independent in eval mode, so the gradient of the summed scores is per-image.
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activation)
    return activation.detach(), grad.detach(), logits.detach()


@register
class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k mean(dy/dA_k) A_k)."""

    name = "gradcam"

    def _explain(self, model, layer, images, targets) -> Attribution:
        activation, grad, _ = layer_activation_and_grad(model, layer, images, targets, self.name)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        maps = torch.relu((weights * activation).sum(1))
        return Attribution(maps.float(), targets, targets)
