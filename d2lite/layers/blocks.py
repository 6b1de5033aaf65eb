"""Base class of CNN blocks (ResNet's BasicBlock / BottleneckBlock derive from it)."""

from torch import nn

from .batch_norm import FrozenBatchNorm2d

__all__ = ["CNNBlockBase"]


class CNNBlockBase(nn.Module):
    """A CNN block with fixed ``in_channels``, ``out_channels`` and ``stride``.

    Args:
        in_channels, out_channels: channels of the input / output.
        stride: the block's spatial stride (output size = input size / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "CNNBlockBase":
        """Stop gradients to all parameters and turn every BatchNorm into FrozenBatchNorm2d.

        Returns:
            the block itself.
        """
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self
