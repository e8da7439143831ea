"""The CIFAR ResNet of He et al. (2016), section 4.2: depth 6n+2 (ResNet-20: n=3).

A 3x3 convolution with 16 channels, then three stages of n basic blocks with 16, 32 and 64
channels (the first block of stages 2 and 3 halves the resolution), global average pooling and a
linear classifier. Every convolution is followed by batch norm. Shortcuts are identities; where
the shape changes the shortcut subsamples and pads the new channels with zeros ("option A", no
extra parameters), as in the paper's CIFAR experiments. ResNet-20 has 0.27 M parameters.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.pad = outputs - inputs
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth: int = 20, classes: int = 10, width: int = 16, channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise TypeError(f"ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, inputs = [], width
        for stage in range(3):
            outputs = width * 2**stage
            for index in range(n):
                blocks.append(BasicBlock(inputs, outputs, 2 if stage > 0 and index == 0 else 1))
                inputs = outputs
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(inputs, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def resnet(depth: int = 20, classes: int = 10, width: int = 16) -> ResNet:
    return ResNet(depth, classes, width)
