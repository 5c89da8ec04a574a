"""Reference U-Net with the flat layout of the notebook and of fissure before the split into
encoder, decoder and head, for tests of weights saved under those key names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn


class _DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class FlatUNet(nn.Module):
    """The model before it was split into parts, verbatim but for the encoder choice: its
    state-dict keys (``encoder0.*`` ... ``final.*``) are those of today's checkpoints and of
    the original notebook's ``best_model.pth``."""

    def __init__(self, encoder="resnet18"):
        super().__init__()
        resnet = getattr(tvm, encoder)(weights=None)
        self.encoder0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.pool0 = resnet.maxpool
        self.encoder1, self.encoder2 = resnet.layer1, resnet.layer2
        self.encoder3, self.encoder4 = resnet.layer3, resnet.layer4
        c0 = resnet.conv1.out_channels
        c1, c2, c3, c4 = ((getattr(s[-1], "conv3", None) or s[-1].conv2).out_channels
                          for s in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4))
        narrow = getattr(type(resnet.layer1[0]), "expansion", 1)
        d4, d3, d2, d1 = c3 // narrow, c2 // narrow, c1 // narrow, c0
        self.up4 = nn.ConvTranspose2d(c4, d4, kernel_size=2, stride=2)
        self.dec4 = _DoubleConv(d4 + c3, d4)
        self.up3 = nn.ConvTranspose2d(d4, d3, kernel_size=2, stride=2)
        self.dec3 = _DoubleConv(d3 + c2, d3)
        self.up2 = nn.ConvTranspose2d(d3, d2, kernel_size=2, stride=2)
        self.dec2 = _DoubleConv(d2 + c1, d2)
        self.up1 = nn.ConvTranspose2d(d2, d1, kernel_size=2, stride=2)
        self.dec1 = _DoubleConv(d1 + c0, d1)
        self.final = nn.Conv2d(d1, 1, kernel_size=1)

    def forward(self, x):
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 32, -width % 32
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        e0 = self.encoder0(x)
        e1 = self.encoder1(self.pool0(e0))
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        d4 = self.dec4(torch.cat([self.up4(e4), e3], dim=1))
        d3 = self.dec3(torch.cat([self.up3(d4), e2], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e1], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e0], dim=1))
        out = self.final(d1)
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out[..., :height, :width]
