import gzip
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from flat_unet import FlatUNet

from fissure import checkpoint
from fissure.checkpoint import Checkpoint, checkpoint_from_dict, load_checkpoint, make_checkpoint
from fissure.config import config_from_dict
from fissure.errors import CheckpointError
from fissure.model import build_model, rename_legacy_keys


@pytest.fixture()
def small():
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": 64}})
    return build_model("resnet18"), cfg


def test_round_trip_describes_itself(tmp_path, small):
    model, cfg = small
    ckpt = make_checkpoint(model, cfg, epoch=3, metrics={"val_iou": 0.5}, threshold=0.4)
    ckpt.save(tmp_path / "best.pt")
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert raw["model"] == {"arch": "ResNetUNet", "encoder": "resnet18", "n_classes": 1}
    assert raw["input"] == {"mode": "resize", "size": 64}
    assert raw["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert raw["config"]["model"]["encoder"] == "resnet18" and "fissure_version" in raw
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert isinstance(ckpt, Checkpoint) and ckpt.encoder == "resnet18"
    assert ckpt.threshold == 0.4 and ckpt.epoch == 3 and ckpt.metrics["val_iou"] == 0.5
    assert (ckpt.policy.mode, ckpt.policy.size, ckpt.policy.amp) == ("resize", 64, True)
    assert ckpt.mean == (0.485, 0.456, 0.406) and ckpt.config == cfg
    assert ckpt.origin == str(tmp_path / "best.pt")
    again = ckpt.build_model()
    assert not again.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])


def test_gzip_compressed_checkpoint_loads(tmp_path, small):
    model, cfg = small
    make_checkpoint(model, cfg, epoch=0).save(tmp_path / "best.pt")
    (tmp_path / "best.pt.gz").write_bytes(gzip.compress((tmp_path / "best.pt").read_bytes()))
    assert load_checkpoint(tmp_path / "best.pt.gz").epoch == 0


def test_notebook_state_dict_is_accepted(tmp_path):
    torch.save(FlatUNet("resnet34").state_dict(), tmp_path / "best_model.pth")
    ckpt = load_checkpoint(tmp_path / "best_model.pth")
    assert ckpt.encoder == "resnet34" and ckpt.threshold == 0.5
    assert (ckpt.policy.mode, ckpt.policy.size) == ("resize", 256)
    ckpt.build_model()


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_payload_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as handle:
        torch.save({"format": "fissure-checkpoint", "x": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "raw.pkl")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable torch checkpoint"),
        (b"hello world", "not a readable torch checkpoint"),
        (gzip.compress(b"x", mtime=0)[:-3], "corrupt gzip"),
    ],
    ids=["empty", "text", "truncated-gzip"],
)
def test_non_checkpoints_are_named(tmp_path, content, message):
    path = tmp_path / "thing.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_torch_file_that_is_not_ours(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fissure checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_other_encoder_is_refused(tmp_path, small):
    model, cfg = small
    ckpt = make_checkpoint(model, cfg, epoch=0)
    with pytest.raises(CheckpointError, match="made for encoder resnet18, but resnet34"):
        ckpt.check_encoder("resnet34")
    raw = ckpt.to_dict()
    raw["model"]["encoder"] = "resnet34"  # label says 34, weights are 18
    with pytest.raises(CheckpointError, match="x.pt: weights do not fit"):
        checkpoint_from_dict(raw, "x.pt").build_model()


def test_failed_write_keeps_the_old_file(tmp_path, small, monkeypatch):
    model, cfg = small
    path = tmp_path / "last.pt"
    make_checkpoint(model, cfg, epoch=1).save(path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"last.pt: could not write the checkpoint "
                       r"\(\[Errno 28\] No space left on device\); the previous file"):
        make_checkpoint(model, cfg, epoch=2).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_is_named_when_torch_only_says_unexpected_pos(tmp_path, small, monkeypatch):
    """On a full disk torch.save's zip writer fails with an opaque RuntimeError; the free
    space left after the partial write says what happened."""
    model, cfg = small
    path = tmp_path / "best.pt"

    def runs_out_of_disk(obj, f):
        Path(f).write_bytes(b"\0" * (3 * 1024 * 1024))
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 3956096 vs 3955992"
        )

    monkeypatch.setattr(torch, "save", runs_out_of_disk)
    monkeypatch.setattr(
        checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12, 2**20)
    )
    with pytest.raises(CheckpointError, match=r"best.pt: could not write the checkpoint: the "
                       r"disk is full \(1 MiB free after 3 MiB written\)"):
        make_checkpoint(model, cfg, epoch=1).save(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_checkpoint_from_a_gpu_run_loads_on_the_cpu(tmp_path, small):
    # a GPU run's last.pt: weights on the device, and the optimiser's moments beside them
    model, cfg = small
    model = model.cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 3, 64, 64, device="cuda")).mean().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict()}
    make_checkpoint(model, cfg, epoch=0, train_state=state).save(tmp_path / "last.pt")
    ckpt = load_checkpoint(tmp_path / "last.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())
    moments = ckpt.train_state["optimizer"]["state"]
    assert moments and all(v.device.type == "cpu" for m in moments.values()
                           for v in m.values() if isinstance(v, torch.Tensor))
    assert ckpt.build_model("cpu")(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def _todays_dict(model, threshold=0.3):
    """A checkpoint as the code before the model's split into parts wrote it, spelled out key
    by key (format version 1, weights under the flat names ``encoder0.*`` ... ``final.*``)."""
    cfg = {"data": {"size": 96, "mode": "crop"}, "model": {"encoder": "resnet18"},
           "train": {"amp": False}, "eval": {"min_area": 7}}
    return {
        "format": "fissure-checkpoint", "format_version": 1, "fissure_version": "0.1.0",
        "model": {"arch": "ResNetUNet", "encoder": "resnet18", "n_classes": 1},
        "state_dict": model.state_dict(), "threshold": threshold,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "input": {"mode": "crop", "size": 96}, "config": cfg, "epoch": 4,
        "metrics": {"val_iou": 0.25},
    }


def test_todays_format_loads_with_its_key_names(tmp_path):
    flat = FlatUNet("resnet18")
    assert {"encoder0.0.weight", "final.weight"} <= set(flat.state_dict())
    torch.save(_todays_dict(flat), tmp_path / "today.pt")
    ckpt = load_checkpoint(tmp_path / "today.pt")
    assert (ckpt.policy.mode, ckpt.policy.size, ckpt.policy.amp) == ("crop", 96, False)
    assert ckpt.threshold == 0.3 and ckpt.epoch == 4 and ckpt.config.eval.min_area == 7
    rebuilt = ckpt.build_model()
    renamed = rename_legacy_keys(flat.state_dict())
    assert list(renamed) == list(rebuilt.state_dict())
    for key, value in renamed.items():
        assert torch.equal(value, rebuilt.state_dict()[key])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(flat.eval()(x), rebuilt(x))
    again = checkpoint_from_dict(ckpt.to_dict(), "again")
    assert again.to_dict()["input"] == {"mode": "crop", "size": 96}


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_stored_threshold_outside_zero_one_is_named(tmp_path, threshold):
    torch.save(_todays_dict(FlatUNet("resnet18"), threshold), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=r"t.pt: .*threshold: must be within \(0, 1\)"):
        load_checkpoint(tmp_path / "t.pt")


def test_more_than_one_class_is_refused(tmp_path):
    raw = _todays_dict(FlatUNet("resnet18"))
    raw["model"]["n_classes"] = 3
    torch.save(raw, tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match="n_classes"):
        load_checkpoint(tmp_path / "n.pt")


def test_a_newer_format_asks_for_an_upgrade(tmp_path, small):
    model, cfg = small
    raw = make_checkpoint(model, cfg, epoch=0).to_dict()
    raw["format_version"] += 1
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer fissure"):
        load_checkpoint(tmp_path / "new.pt")


def _light(decoder_channels=(64, 32, 16, 16)):
    cfg = config_from_dict({"model": {"encoder": "resnet18",
                                      "decoder_channels": list(decoder_channels)},
                            "data": {"size": 64}})
    torch.manual_seed(0)
    return build_model("resnet18", decoder_channels=decoder_channels), cfg


def test_custom_decoder_widths_are_stored_and_rebuilt(tmp_path):
    model, cfg = _light()
    make_checkpoint(model, cfg, epoch=1).save(tmp_path / "light.pt")
    raw = torch.load(tmp_path / "light.pt", weights_only=True)
    assert raw["model"]["decoder_channels"] == [64, 32, 16, 16]
    assert raw["config"]["model"]["decoder_channels"] == [64, 32, 16, 16]
    ckpt = load_checkpoint(tmp_path / "light.pt")
    assert ckpt.model.decoder_channels == (64, 32, 16, 16)
    rebuilt = ckpt.build_model()
    assert rebuilt.decoder.widths == (64, 32, 16, 16)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt(x))


def test_widths_from_the_stored_config_when_the_model_entry_lacks_them(tmp_path):
    model, cfg = _light()
    raw = make_checkpoint(model, cfg, epoch=0).to_dict()
    del raw["model"]["decoder_channels"]
    assert checkpoint_from_dict(raw, "c.pt").build_model().decoder.widths == (64, 32, 16, 16)


def test_weights_of_other_widths_are_one_line_naming_the_file(tmp_path):
    model, cfg = _light()
    raw = make_checkpoint(model, cfg, epoch=0).to_dict()
    raw["model"]["decoder_channels"] = [128, 64, 32, 16]  # label and weights disagree
    torch.save(raw, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "mixed.pt").build_model()
    message = str(info.value)
    assert f"{tmp_path / 'mixed.pt'}: weights do not fit" in message and "\n" not in message
    assert "mis-shaped" in message and "size mismatch" not in message


def test_default_widths_write_the_notebook_model_entry(tmp_path, small):
    model, cfg = small
    raw = make_checkpoint(model, cfg, epoch=0).to_dict()
    assert "decoder_channels" not in raw["model"]
    assert checkpoint_from_dict(raw, "d.pt").model.decoder_channels is None


@pytest.mark.parametrize("bad", [[64, 32, 16], [64, 32, 16, 0], "wide"])
def test_unusable_stored_widths_are_named(tmp_path, bad):
    model, cfg = _light()
    raw = make_checkpoint(model, cfg, epoch=0).to_dict()
    raw["model"]["decoder_channels"] = bad
    with pytest.raises(CheckpointError, match="w.pt: stored values are unusable.*decoder_channels"):
        checkpoint_from_dict(raw, "w.pt")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda raw: raw.pop("state_dict"), "no 'state_dict'"),
        (lambda raw: raw.update(state_dict=[1, 2]), "state_dict is not a mapping"),
        (lambda raw: raw.update(threshold=None), "threshold: expected a number"),
        (lambda raw: raw["input"].update(size="big"), "invalid literal for int()"),
        (lambda raw: raw.update(normalization={"mean": "abc"}), "could not convert"),
    ],
    ids=["no-weights", "weights-not-a-dict", "null-threshold", "size-text", "mean-text"],
)
def test_a_damaged_stored_field_is_one_named_error(small, change, reason):
    model, cfg = small
    raw = make_checkpoint(model, cfg, epoch=0).to_dict()
    change(raw)
    with pytest.raises(CheckpointError) as info:
        checkpoint_from_dict(raw, "d.pt")
    message = str(info.value)
    assert message.startswith("d.pt: stored values are unusable (") and reason in message
    assert "\n" not in message


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_a_bare_state_dict_of_todays_model_names_its_encoder(tmp_path, encoder):
    model = build_model(encoder)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    ckpt = load_checkpoint(tmp_path / "bare.pt")
    assert ckpt.encoder == encoder and ckpt.threshold == 0.5
    again = ckpt.build_model()
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
