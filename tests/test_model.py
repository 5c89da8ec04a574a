import pytest
import torch

from fissure.errors import CheckpointError, ConfigError
from fissure.model import ResNetUNet, build_model, load_weights


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
    assert [m for m in ("encoder0", "pool0", "encoder1", "encoder4", "up4", "dec1", "final")
            if hasattr(model, m)] == ["encoder0", "pool0", "encoder1", "encoder4", "up4", "dec1",
                                      "final"]
    assert model.up4.in_channels == 512 and model.up4.out_channels == 256
    assert model.dec4.double_conv[0].in_channels == 512
    assert model.dec1.double_conv[0].in_channels == 128
    assert model.final.in_channels == 64


def test_channel_counts_come_from_the_encoder():
    model = build_model("resnet50")
    assert model.up4.in_channels == 2048 and model.dec4.double_conv[0].in_channels == 256 + 1024


def test_forward_backward_on_64x64():
    torch.manual_seed(0)
    model = build_model("resnet18")
    x = torch.randn(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.9).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder0[0].weight.grad.abs().sum() > 0


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
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1, "get_state_dict", offline)
    with pytest.raises(ConfigError, match="model.pretrained: cannot load"):
        build_model("resnet18", pretrained=True)
