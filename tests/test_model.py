import warnings

import pytest
import torch
import torchvision.models as tvm
from flat_unet import FlatUNet

from fissure.errors import CheckpointError, ConfigError
from fissure.model import (
    LEGACY_PREFIXES,
    ResNetUNet,
    build_model,
    load_weights,
    rename_legacy_keys,
)


def _trained_pair(encoder):
    """The flat reference and the model in parts from one seed, after one training step."""
    pair = []
    for cls in (FlatUNet, lambda e: build_model(e)):
        torch.manual_seed(3)
        model = cls(encoder)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        model(x).square().mean().backward()
        pair.append(model.eval())
    return pair


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("size", [(64, 64), (320, 480)])
def test_output_shape_matches_input(encoder, size):
    model = build_model(encoder).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1, *size)


def test_sizes_not_a_multiple_of_32_and_tiny_inputs():
    model = build_model("resnet18").eval()
    with torch.no_grad():
        for size in [(37, 50), (5, 7), (321, 479)]:
            assert model(torch.randn(2, 3, *size)).shape == (2, 1, *size)


def test_notebook_structure_for_resnet34():
    model = ResNetUNet()
    assert [name for name, _ in model.named_children()] == ["encoder", "decoder", "head"]
    assert [name for name, _ in model.encoder.named_children()] == [
        "stem", "pool", "layer1", "layer2", "layer3", "layer4"]
    assert model.encoder.channels == (64, 64, 128, 256, 512)
    assert model.decoder.up4.in_channels == 512 and model.decoder.up4.out_channels == 256
    assert model.decoder.dec4.double_conv[0].in_channels == 512
    assert model.decoder.dec1.double_conv[0].in_channels == 128
    assert model.head.conv.in_channels == 64


def test_channel_counts_come_from_the_encoder():
    model = build_model("resnet50")
    assert model.decoder.up4.in_channels == 2048
    assert model.decoder.dec4.double_conv[0].in_channels == 256 + 1024


def test_forward_backward_on_64x64():
    torch.manual_seed(0)
    model = build_model("resnet18")
    x = torch.randn(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.9).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0


def test_channels_last_gives_the_same_result():
    model = build_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4)


def test_unknown_encoder_and_mismatched_weights():
    with pytest.raises(ConfigError, match="unknown encoder"):
        build_model("vgg16")
    small, big = build_model("resnet18"), build_model("resnet34")
    with pytest.raises(CheckpointError, match="do not fit this model"):
        load_weights(small, big.state_dict(), "other.pt")


def test_pretrained_without_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1, "get_state_dict", offline)
    with pytest.raises(ConfigError, match="model.pretrained: cannot load"):
        build_model("resnet18", pretrained=True)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_same_seed_same_weights_and_bit_identical_forward_as_the_flat_model(encoder):
    flat, parts = _trained_pair(encoder)
    # same draws in the same order, and parameters in the same order (optimiser state)
    for a, b in zip(flat.parameters(), parts.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    for a, b in zip(flat.buffers(), parts.buffers(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        for size in [(64, 64), (70, 45), (5, 7), (96, 130)]:
            x = torch.randn(2, 3, *size)
            assert torch.equal(flat(x), parts(x)), size


def test_weights_under_todays_key_names_load():
    flat, parts = _trained_pair("resnet18")
    old = flat.state_dict()
    assert {"encoder0.0.weight", "encoder4.0.conv1.weight", "up4.weight", "final.weight"} <= set(
        old)
    renamed = rename_legacy_keys(old)
    assert list(renamed) == list(parts.state_dict())
    for path in ("load_weights", "load_state_dict"):
        model = build_model("resnet18")
        if path == "load_weights":
            load_weights(model, old, "today.pt")
        else:
            model.load_state_dict(old)
        for key, value in parts.state_dict().items():
            assert torch.equal(value, model.state_dict()[key]), (path, key)
    assert set(old) == set(flat.state_dict())  # the caller's dict is left as it was


def test_an_ema_copy_and_optimiser_state_under_todays_names_resume():
    flat, parts = _trained_pair("resnet18")
    ema_old = torch.optim.swa_utils.AveragedModel(flat)
    ema = torch.optim.swa_utils.AveragedModel(build_model("resnet18"))
    ema.load_state_dict(ema_old.state_dict())
    for key, value in parts.state_dict().items():
        assert torch.equal(value, ema.module.state_dict()[key]), key
    opt_old = torch.optim.Adam(flat.parameters())
    opt_old.step()
    opt = torch.optim.Adam(parts.parameters())
    opt.load_state_dict(opt_old.state_dict())
    for a, b in zip(flat.parameters(), parts.parameters(), strict=True):
        assert torch.equal(opt_old.state[a]["exp_avg"], opt.state[b]["exp_avg"])


def test_rename_legacy_keys_under_a_prefix_only():
    state = {"module.final.weight": 1, "module.head.conv.bias": 2, "final.weight": 3, "n": 4}
    assert rename_legacy_keys(state, "module.") == {
        "module.head.conv.weight": 1, "module.head.conv.bias": 2, "final.weight": 3, "n": 4}
    keys = list(build_model("resnet18").state_dict())
    assert all(any(k.startswith(new) for k in keys) for new in LEGACY_PREFIXES.values())


def test_the_model_scripts_as_it_is():
    model = build_model("resnet18").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    with torch.no_grad():
        for size in [(64, 96), (70, 45), (5, 7)]:
            x = torch.randn(1, 3, *size)
            assert torch.equal(scripted(x), model(x)), size


def test_checkpoint_files_under_todays_key_names_load(tmp_path):
    from fissure.checkpoint import load_checkpoint

    torch.manual_seed(0)
    flat = FlatUNet("resnet34").eval()
    torch.save(flat.state_dict(), tmp_path / "best_model.pth")  # the notebook's bare file
    torch.save({"format": "fissure-checkpoint", "format_version": 1,
                "model": {"arch": "ResNetUNet", "encoder": "resnet34", "n_classes": 1},
                "state_dict": flat.state_dict(), "threshold": 0.3}, tmp_path / "today.pt")
    x = torch.randn(1, 3, 40, 72)
    for name in ("best_model.pth", "today.pt"):
        with torch.no_grad():
            assert torch.equal(load_checkpoint(tmp_path / name).build_model()(x), flat(x)), name


def test_a_light_decoder_trains_and_keeps_the_output_shape():
    torch.manual_seed(0)
    model = build_model("resnet18", decoder_channels=(64, 32, 16, 16))
    assert model.decoder.widths == (64, 32, 16, 16)
    assert model.decoder.up4.out_channels == 64 and model.decoder.up1.out_channels == 16
    assert model.decoder.dec1.double_conv[0].in_channels == 16 + 64
    assert model.head.conv.in_channels == 16
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 1, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.9).float()
    torch.nn.functional.binary_cross_entropy_with_logits(out, target).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.decoder.up4.weight.grad.abs().sum() > 0
    heavy = sum(p.numel() for p in build_model("resnet18").decoder.parameters())
    assert sum(p.numel() for p in model.decoder.parameters()) < heavy / 4


def test_default_decoder_channels_are_the_notebooks_exactly():
    default = build_model("resnet34")
    spelled = build_model("resnet34", decoder_channels=(256, 128, 64, 64))
    shapes = {k: v.shape for k, v in default.state_dict().items()}
    assert shapes == {k: v.shape for k, v in spelled.state_dict().items()}
    assert default.decoder.widths == (256, 128, 64, 64)
    assert build_model("resnet50").decoder.widths == (256, 128, 64, 64)
    load_weights(spelled, default.state_dict(), "default.pt")


@pytest.mark.parametrize("widths", [(64, 32, 16), (64, 32, 16, 0), (64, 32, 16, 8.5)])
def test_bad_decoder_channels_name_the_key(widths):
    with pytest.raises(ConfigError, match="model.decoder_channels"):
        build_model("resnet18", decoder_channels=widths)


def test_a_light_decoder_scripts():
    model = build_model("resnet18", decoder_channels=(32, 16, 16, 8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))
