"""The ResNet-encoder U-Net of the original notebook, built from three parts.

:class:`ResNetEncoder` turns an image into five feature maps, :class:`UNetDecoder` merges
them back up to stride 2, and :class:`SegmentationHead` makes one logit per pixel at the
input's size. :class:`ResNetUNet` pads the input to a multiple of :data:`STRIDE`, runs the
three parts and crops the padding off again, so a 480x320 photo goes through unchanged.
Every ``forward`` compiles with ``torch.jit.script``, so an export wraps the model rather
than repeating its wiring.

State-dict keys are ``encoder.*``, ``decoder.*`` and ``head.*``. Weights saved under the
flat names of the notebook and of fissure before the split (``encoder0.*`` ... ``final.*``)
are renamed on load (:func:`rename_legacy_keys`), by :func:`load_weights` and by any
``load_state_dict`` on the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn

from .errors import CheckpointError, ConfigError

ENCODERS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
}
STRIDE = 32
"""The encoder halves the resolution five times (stem conv, max-pool, layer2..layer4)."""

LEGACY_PREFIXES = {
    "encoder0.": "encoder.stem.",
    "encoder1.": "encoder.layer1.",
    "encoder2.": "encoder.layer2.",
    "encoder3.": "encoder.layer3.",
    "encoder4.": "encoder.layer4.",
    **{f"{kind}{k}.": f"decoder.{kind}{k}." for k in (4, 3, 2, 1) for kind in ("up", "dec")},
    "final.": "head.conv.",
}
"""State-dict prefixes of the flat notebook model, and what they are called in the parts."""


class DoubleConv(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU: the U-Net decoder block.

    Shapes:
        x: (N, in_channels, H, W).
        returns: (N, out_channels, H, W).
    """

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

    def forward(self, x: Tensor) -> Tensor:
        """The block applied to ``x``."""
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


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    conv = getattr(last, "conv3", None) or last.conv2
    return conv.out_channels


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its classifier: the stem, the max-pool and four stages.

    ``channels`` holds the widths of the five outputs: 64, 64, 128, 256, 512 for
    resnet18/34 and 64, 256, 512, 1024, 2048 for resnet50. ``expansion`` is 4 for the
    bottleneck stages of resnet50, else 1.

    Shapes:
        x: (N, 3, H, W) float, normalised; H and W multiples of 32.
        returns: five maps (N, channels[k], H / 2^(k+1), W / 2^(k+1)), k = 0..4.
    """

    def __init__(self, encoder: str = "resnet34", pretrained: bool = False) -> None:
        super().__init__()
        resnet = _load_resnet(encoder, pretrained)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.pool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        stages = (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.channels = (resnet.conv1.out_channels, *(_out_channels(s) for s in stages))
        self.expansion = getattr(type(resnet.layer1[0]), "expansion", 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps at strides 2, 4, 8, 16 and 32."""
        e0 = self.stem(x)
        e1 = self.layer1(self.pool(e0))
        e2 = self.layer2(e1)
        e3 = self.layer3(e2)
        e4 = self.layer4(e3)
        return [e0, e1, e2, e3, e4]


def default_decoder_channels(channels: tuple[int, ...], expansion: int = 1) -> tuple[int, ...]:
    """The notebook's decoder widths, deepest first, for an encoder's five ``channels``."""
    c0, c1, c2, c3, _ = channels
    return (c3 // expansion, c2 // expansion, c1 // expansion, c0)


def _check_widths(widths: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    values = tuple(widths)
    if len(values) != 4 or any(
        not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in values
    ):
        raise ConfigError(f"model.decoder_channels: four positive integer widths, deepest "
                          f"first (e.g. [256, 128, 64, 64]), got {list(values)}")
    return values


class UNetDecoder(nn.Module):
    """The U-Net decoder: four upsampling steps from stride 32 back to stride 2.

    Each step is a transposed conv that doubles the resolution, concatenation with the
    encoder map of the same stride, and a :class:`DoubleConv`. ``channels`` are the
    encoder's five widths. ``widths`` are the four steps' output widths, deepest first
    (``model.decoder_channels``, as smp's ``decoder_channels``); None gives the notebook's
    (:func:`default_decoder_channels`: 256, 128, 64, 64 for resnet18/34, and a bottleneck
    encoder, ``expansion`` 4, narrowed to the same), whose parameter names and shapes old
    checkpoints hold.

    Shapes:
        features: the encoder's five maps (see :class:`ResNetEncoder`).
        returns: (N, widths[3], H / 2, W / 2).
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        expansion: int = 1,
        widths: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = channels
        d4, d3, d2, d1 = _check_widths(widths or default_decoder_channels(channels, expansion))
        self.widths = (d4, d3, d2, d1)
        self.out_channels = d1
        # Built in this order so that a seeded run draws the notebook's initial weights.
        self.up4 = nn.ConvTranspose2d(c4, d4, kernel_size=2, stride=2)
        self.dec4 = DoubleConv(d4 + c3, d4)
        self.up3 = nn.ConvTranspose2d(d4, d3, kernel_size=2, stride=2)
        self.dec3 = DoubleConv(d3 + c2, d3)
        self.up2 = nn.ConvTranspose2d(d3, d2, kernel_size=2, stride=2)
        self.dec2 = DoubleConv(d2 + c1, d2)
        self.up1 = nn.ConvTranspose2d(d2, d1, kernel_size=2, stride=2)
        self.dec1 = DoubleConv(d1 + c0, d1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """The stride-2 map decoded from ``features``."""
        d4 = self.dec4(torch.cat([self.up4(features[4]), features[3]], dim=1))
        d3 = self.dec3(torch.cat([self.up3(d4), features[2]], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), features[1]], dim=1))
        return self.dec1(torch.cat([self.up1(d2), features[0]], dim=1))


class SegmentationHead(nn.Module):
    """A 1x1 conv to ``n_classes`` logits, upsampled bilinearly to ``size``.

    Shapes:
        x: (N, in_channels, h, w).
        size: [H, W], the output's height and width.
        returns: (N, n_classes, H, W) logits.
    """

    def __init__(self, in_channels: int, n_classes: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, n_classes, kernel_size=1)

    def forward(self, x: Tensor, size: list[int]) -> Tensor:
        """Logits for ``x`` at ``size``."""
        return F.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


def pad_to_stride(x: Tensor, stride: int) -> Tensor:
    """``x`` padded at the bottom and right to the next multiple of ``stride``.

    Reflection keeps border statistics photo-like (zeros would look like dark cracks); a
    side too short to reflect by the padding is replicated instead.

    Shapes:
        x: (N, C, H, W).
        returns: (N, C, ceil(H / stride) * stride, ceil(W / stride) * stride).
    """
    height, width = x.shape[-2], x.shape[-1]
    pad_h = (stride - height % stride) % stride
    pad_w = (stride - width % stride) % stride
    if pad_h > 0 or pad_w > 0:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, [0, pad_w, 0, pad_h], mode=mode)
    return x


class ResNetUNet(nn.Module):
    """U-Net with a torchvision ResNet encoder, for any input size.

    The input is padded to a multiple of :data:`STRIDE` (:func:`pad_to_stride`), run
    through :class:`ResNetEncoder`, :class:`UNetDecoder` and :class:`SegmentationHead`, and
    the logits are cropped back to the input's size. Channel counts come from the encoder,
    so resnet18/34 (64..512) and resnet50 (64, 256..2048) share one definition;
    ``decoder_channels`` (four widths, deepest first) narrows or widens the decoder, None
    keeping the notebook's.

    Shapes:
        x: (N, 3, H, W) float, normalised; any H and W.
        returns: (N, n_classes, H, W) logits.
    """

    def __init__(
        self,
        n_classes: int = 1,
        encoder: str = "resnet34",
        pretrained: bool = False,
        decoder_channels: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.encoder_name = encoder
        self.stride = STRIDE
        if decoder_channels is not None:  # before the encoder: a bad width fails fast
            decoder_channels = _check_widths(decoder_channels)
        self.encoder = ResNetEncoder(encoder, pretrained)
        self.decoder = UNetDecoder(
            self.encoder.channels, self.encoder.expansion, decoder_channels
        )
        self.head = SegmentationHead(self.decoder.out_channels, n_classes)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys_hook)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for ``x``, at its size."""
        height, width = x.shape[-2], x.shape[-1]
        padded = pad_to_stride(x, self.stride)
        out = self.head(self.decoder(self.encoder(padded)), [padded.shape[-2], padded.shape[-1]])
        return out[..., :height, :width]


def build_model(
    encoder: str = "resnet34",
    pretrained: bool = False,
    n_classes: int = 1,
    decoder_channels: tuple[int, ...] | None = None,
) -> ResNetUNet:
    """A :class:`ResNetUNet` with ``encoder``, ImageNet weights if ``pretrained``.

    ``decoder_channels``: the decoder's four widths, deepest first (``model.decoder_channels``);
    None gives the notebook's. Raises ConfigError naming the key on a bad value.
    """
    return ResNetUNet(n_classes=n_classes, encoder=encoder, pretrained=pretrained,
                      decoder_channels=decoder_channels)


def rename_legacy_keys(state_dict: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """``state_dict`` with keys under the flat notebook names renamed to the parts' names.

    Keys below ``prefix`` (a parent module's, e.g. ``module.`` in an EMA copy) are renamed;
    others, and keys already under the new names, are kept as they are, in order.
    """
    out = {}
    for key, value in state_dict.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        for old, new in LEGACY_PREFIXES.items():
            if name is not None and name.startswith(old):
                key = prefix + new + name[len(old):]
                break
        out[key] = value
    return out


def _rename_legacy_keys_hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    # load_state_dict hands every module's pre-hook the dict its children are then loaded
    # from, so renaming in place lets old weights load through any path, EMA copies included.
    renamed = rename_legacy_keys(dict(state_dict), prefix)
    if list(renamed) != list(state_dict):
        state_dict.clear()
        state_dict.update(renamed)


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], origin: str) -> None:
    """Load ``state_dict`` into ``model``, renaming the flat notebook names first.

    A mismatch is one CheckpointError line naming ``origin``, not torch's multi-screen report.
    """
    state_dict = rename_legacy_keys(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected and {len(wrong)} "
                  f"mis-shaped tensors, e.g. {(wrong or missing or unexpected)[0]}")
        raise CheckpointError(f"{origin}: weights do not fit this model ({detail})")
    model.load_state_dict(state_dict)
