"""The ResNet-encoder U-Net of the original notebook.

Shapes: input (N, 3, H, W) normalised float, any H and W; output (N, n_classes, H, W)
logits. Inputs are padded to a multiple of 32 inside ``forward`` and cropped back, so a
480x320 photo goes through unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from .errors import CheckpointError, ConfigError

ENCODERS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
}
# The encoder halves the resolution five times (stem conv, max-pool, layer2..layer4).
STRIDE = 32


class DoubleConv(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU: the U-Net decoder block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


def _load_resnet(encoder: str, pretrained: bool) -> nn.Module:
    if encoder not in ENCODERS:
        raise ConfigError(f"model.encoder: unknown encoder '{encoder}' "
                          f"(choose one of {', '.join(ENCODERS)})")
    build, weights = ENCODERS[encoder]
    if not pretrained:
        return build(weights=None)
    try:
        return build(weights=weights)
    except Exception as exc:  # network, proxy or cache failures all surface differently
        raise ConfigError(
            f"model.pretrained: cannot load torchvision's ImageNet weights for {encoder} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
            "put them in the torch hub cache (TORCH_HOME) or set model.pretrained=false"
        ) from None


class ResNetUNet(nn.Module):
    """U-Net with a torchvision ResNet encoder (encoder0..encoder4) and a transposed-conv decoder.

    Channel counts come from the encoder, so resnet18/34 (64..512) and resnet50
    (64, 256..2048) share one definition.
    """

    def __init__(self, n_classes: int = 1, encoder: str = "resnet34", pretrained: bool = False):
        super().__init__()
        resnet = _load_resnet(encoder, pretrained)
        self.encoder_name = encoder
        self.encoder0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.pool0 = resnet.maxpool
        self.encoder1 = resnet.layer1
        self.encoder2 = resnet.layer2
        self.encoder3 = resnet.layer3
        self.encoder4 = resnet.layer4

        c0 = resnet.conv1.out_channels
        c1, c2, c3, c4 = (_out_channels(layer) for layer in
                          (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4))
        # Decoder widths follow the notebook for resnet34: 256, 128, 64, 64.
        narrow = _expansion(resnet)
        d4, d3, d2, d1 = c3 // narrow, c2 // narrow, c1 // narrow, c0
        self.up4 = nn.ConvTranspose2d(c4, d4, kernel_size=2, stride=2)
        self.dec4 = DoubleConv(d4 + c3, d4)
        self.up3 = nn.ConvTranspose2d(d4, d3, kernel_size=2, stride=2)
        self.dec3 = DoubleConv(d3 + c2, d3)
        self.up2 = nn.ConvTranspose2d(d3, d2, kernel_size=2, stride=2)
        self.dec2 = DoubleConv(d2 + c1, d2)
        self.up1 = nn.ConvTranspose2d(d2, d1, kernel_size=2, stride=2)
        self.dec1 = DoubleConv(d1 + c0, d1)
        self.final = nn.Conv2d(d1, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % STRIDE, -width % STRIDE
        if pad_h or pad_w:
            # Reflection keeps border statistics photo-like; zeros would look like dark cracks.
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        e0 = self.encoder0(x)  # stride 2
        e1 = self.encoder1(self.pool0(e0))  # stride 4
        e2 = self.encoder2(e1)  # stride 8
        e3 = self.encoder3(e2)  # stride 16
        e4 = self.encoder4(e3)  # stride 32
        d4 = self.dec4(torch.cat([self.up4(e4), e3], dim=1))
        d3 = self.dec3(torch.cat([self.up3(d4), e2], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e1], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e0], dim=1))
        out = self.final(d1)  # stride 2
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out[..., :height, :width]


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    conv = getattr(last, "conv3", None) or last.conv2
    return conv.out_channels


def _expansion(resnet: nn.Module) -> int:
    """Bottleneck encoders (resnet50) have 4x wider stages; narrow the decoder to match 34."""
    return getattr(type(resnet.layer1[0]), "expansion", 1)


def build_model(
    encoder: str = "resnet34", pretrained: bool = False, n_classes: int = 1
) -> ResNetUNet:
    return ResNetUNet(n_classes=n_classes, encoder=encoder, pretrained=pretrained)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Load weights, turning torch's multi-screen mismatch report into one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected and {len(wrong)} "
                  f"mis-shaped tensors, e.g. {(wrong or missing or unexpected)[0]}")
        raise CheckpointError(f"{origin}: weights do not fit this model ({detail})")
    model.load_state_dict(state_dict)
