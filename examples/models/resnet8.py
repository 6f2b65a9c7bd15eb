"""ResNet-8, MLPerf Tiny's image-classification reference network (resnet_v1_eembc), restated in PyTorch.

A stem convolution and three residual stages of 16, 32 and 64 filters; each stage is two 3×3 convolutions with
BatchNorm, added to its input (a strided 1×1 convolution where the stage halves the map), then average pooling
over the whole map and one fully connected layer: about 78 k parameters and 12.5 M multiply-accumulates on a
32×32 RGB image. As in the reference, the 1×1 shortcut convolutions have no BatchNorm. Two departures from its
Keras source, neither changing what is computed at inference: convolutions followed by BatchNorm carry no bias of
their own (BatchNorm's shift subsumes it), and the pooling averages whatever map the input size leaves, so the
network takes any image size and channel count (MLPerf Tiny trains it on CIFAR-10, 32×32 RGB; `in_channels: 1`
takes grey images).

Nothing here imports edgequant: `train.model: examples/models/resnet8.py:ResNet8` and `train.model_args` in a
workload's params.yaml are all the pipeline needs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(channels_in: int, channels_out: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False), nn.BatchNorm2d(channels_out)


class Stage(nn.Module):
    """Two 3×3 convolutions with BatchNorm, added to the stage's input (through a strided 1×1 convolution when it downsamples)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(channels_in, channels_out, stride)
        self.conv2, self.bn2 = conv_bn(channels_out, channels_out, 1)
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride) if stride != 1 or channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(self.shortcut(x) + y)


class ResNet8(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, filters: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        f1, f2, f3 = filters
        self.conv, self.bn = conv_bn(in_channels, f1, 1)
        self.stage1 = Stage(f1, f1, 1)
        self.stage2 = Stage(f1, f2, 2)
        self.stage3 = Stage(f2, f3, 2)
        self.fc = nn.Linear(f3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")  # Keras' he_normal, as the reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
