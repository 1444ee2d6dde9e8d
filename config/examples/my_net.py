"""A network of your own, as `config/examples/your_model.yaml` names it: `factory: config/examples/my_net.py:build`.

Any function returning a torch.nn.Module that maps a [N,3,H,W] batch to logits [N,classes] will do.
"""

from torch import nn


def build(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A small VGG-style CNN: three conv blocks, global average pooling, one linear layer."""

    def block(inputs: int, outputs: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                             nn.MaxPool2d(2))

    return nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))
