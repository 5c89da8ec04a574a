import gzip
import os
import pickle

import pytest
import torch

from fissure.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_atomic,
)
from fissure.config import config_from_dict
from fissure.errors import CheckpointError
from fissure.model import build_model


@pytest.fixture()
def small():
    cfg = config_from_dict({"model": {"encoder": "resnet18"}, "data": {"size": 64}})
    return build_model("resnet18"), cfg


def test_round_trip_describes_itself(tmp_path, small):
    model, cfg = small
    save_atomic(make_checkpoint(model, cfg, epoch=3, metrics={"val_iou": 0.5}, threshold=0.4),
                tmp_path / "best.pt")
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["model"] == {"arch": "ResNetUNet", "encoder": "resnet18", "n_classes": 1}
    assert ckpt["threshold"] == 0.4 and ckpt["epoch"] == 3 and ckpt["metrics"]["val_iou"] == 0.5
    assert ckpt["input"] == {"mode": "resize", "size": 64}
    assert ckpt["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert ckpt["config"]["model"]["encoder"] == "resnet18" and "fissure_version" in ckpt
    again = model_from_checkpoint(ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])


def test_gzip_compressed_checkpoint_loads(tmp_path, small):
    model, cfg = small
    save_atomic(make_checkpoint(model, cfg, epoch=0), tmp_path / "best.pt")
    (tmp_path / "best.pt.gz").write_bytes(gzip.compress((tmp_path / "best.pt").read_bytes()))
    assert load_checkpoint(tmp_path / "best.pt.gz")["epoch"] == 0


def test_notebook_state_dict_is_accepted(tmp_path):
    torch.save(build_model("resnet34").state_dict(), tmp_path / "best_model.pth")
    ckpt = load_checkpoint(tmp_path / "best_model.pth")
    assert ckpt["model"]["encoder"] == "resnet34" and ckpt["threshold"] == 0.5


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
        model_from_checkpoint(ckpt, "x.pt", encoder="resnet34")
    ckpt["model"]["encoder"] = "resnet34"  # label says 34, weights are 18
    with pytest.raises(CheckpointError, match="weights do not fit"):
        model_from_checkpoint(ckpt, "x.pt")


def test_failed_write_keeps_the_old_file(tmp_path, small, monkeypatch):
    model, cfg = small
    path = tmp_path / "last.pt"
    save_atomic(make_checkpoint(model, cfg, epoch=1), path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_atomic(make_checkpoint(model, cfg, epoch=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_cuda_checkpoint_maps_to_cpu(tmp_path, small):
    model, cfg = small
    save_atomic(make_checkpoint(model, cfg, epoch=0), tmp_path / "a.pt")
    ckpt = load_checkpoint(tmp_path / "a.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
