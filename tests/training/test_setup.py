"""build_setup: everything a run needs, made from the config in a fixed order."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.config import load_config
from fissure.data import build_source
from fissure.errors import ConfigError, DataError
from fissure.training import TrainSetup, build_setup


def _setup(overrides):
    cfg = load_config(None, overrides + ["train.device=cpu"])
    return build_setup(cfg, build_source(cfg.data))


def _source(overrides):
    return build_source(load_config(None, overrides).data)


def test_setup_follows_the_config(tiny_overrides):
    setup = _setup(tiny_overrides + ["train.batch_size=2", "train.accumulate=3"])
    assert isinstance(setup, TrainSetup)
    assert setup.device == torch.device("cpu") and not setup.dist.active
    assert (len(setup.train_set), len(setup.val_set)) == (8, 2)
    assert setup.batch_size == 2 and setup.workers == 0
    assert setup.steps_per_epoch == 2  # 8 samples, 6 per step
    assert setup.forward is setup.model and setup.ema is None
    assert setup.eval_model is setup.model
    assert setup.policy.size == 64 and not setup.scaler.is_enabled()


def test_fixed_steps_per_epoch_and_ema(tiny_overrides):
    setup = _setup(tiny_overrides + ["train.steps_per_epoch=5", "train.ema=0.9"])
    assert setup.steps_per_epoch == 5
    assert setup.eval_model is setup.model  # the EMA has not begun averaging
    setup.ema.update_parameters(setup.model)
    assert setup.eval_model is setup.ema.module


def test_init_bias_auto_starts_at_the_crack_prior(tiny_overrides):
    """The mean first prediction on the training images is their crack share."""
    from fissure.data import collate
    from fissure.data.dataset import load_pair
    from fissure.runtime import predict_probs

    setup = _setup(tiny_overrides + ["train.init_bias=auto"])
    source, samples = setup.train_set.source, setup.train_set.samples
    prior = (sum(load_pair(source, x)[1].sum() for x in samples)
             / sum(load_pair(source, x)[1].size for x in samples))
    batch = collate([setup.val_set[i] for i in range(len(setup.val_set))])
    probs = predict_probs(setup.model.eval(), batch["image"], setup.policy)
    assert 0.001 < prior < 0.5
    assert float(probs.mean()) == pytest.approx(prior, rel=0.1)
    assert any("init_bias auto" in note for note in setup.notes)
    plain = _setup(tiny_overrides)
    plain_probs = predict_probs(plain.model.eval(), batch["image"], plain.policy)
    assert abs(float(plain_probs.mean()) - prior) > 0.1  # without it: far from the prior


def test_size_auto_takes_the_crop_the_training_images_hold(tiny_overrides):
    setup = _setup(tiny_overrides + ["data.mode=crop", "data.size=auto"])
    assert setup.cfg.data.size == 64 and setup.policy.size == 64  # the 64 px synth images
    assert any(note.startswith("data.size auto: 64 px") for note in setup.notes)


def test_images_smaller_than_the_crop_are_said_to_be_padded(tiny_overrides):
    setup = _setup(tiny_overrides + ["data.mode=crop", "data.size=96"])
    note = next(n for n in setup.notes if "smaller than the 96 px crop" in n)
    assert note.startswith("8 of 8 training images") and "zero-padded" in note
    image = setup.train_set[0]["image"]
    assert tuple(image.shape[-2:]) == (96, 96)
    assert not any("smaller than" in n for n in _setup(
        tiny_overrides + ["data.mode=crop", "data.size=64"]).notes)


def test_a_tiny_validation_split_is_topped_up_from_train(tiny_overrides):
    setup = _setup(tiny_overrides + ["train.min_val_images=4"])
    assert (len(setup.train_set), len(setup.val_set)) == (6, 4)
    assert not {s.image for s in setup.train_set.samples} & {s.image for s in
                                                               setup.val_set.samples}
    assert any("2 training images moved" in note for note in setup.notes)
    again = _setup(tiny_overrides + ["train.min_val_images=4"])
    assert [s.image for s in again.val_set.samples] == [s.image for s in setup.val_set.samples]


def test_the_compute_dtype_is_said(tiny_overrides):
    assert _setup(tiny_overrides).notes[0].startswith("compute dtype: ")


def test_the_same_seed_builds_the_same_model(tiny_overrides):
    a, b = _setup(tiny_overrides), _setup(tiny_overrides)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    other = _setup(tiny_overrides + ["train.seed=1"])
    assert not all(torch.equal(x, y) for x, y in zip(
        a.model.state_dict().values(), other.model.state_dict().values(), strict=True))


def test_pos_weight_auto_reads_the_training_masks(tiny_overrides, monkeypatch):
    from fissure.training import setup as setup_module

    seen = {}
    real = setup_module.build_loss

    def spy(name, params, crack_fraction=None):
        seen["fraction"] = crack_fraction
        return real(name, params, crack_fraction=crack_fraction)

    monkeypatch.setattr(setup_module, "build_loss", spy)
    _setup(tiny_overrides + ["train.loss.params={pos_weight: auto}"])
    assert 0 < seen["fraction"] < 1
    _setup(tiny_overrides)
    assert seen["fraction"] is None


# -- automatic choices: batch size, decoded store, augmentation on the device -------------


def test_batch_size_auto_off_cuda_is_the_documented_fallback(tiny_overrides):
    from fissure.training.setup import AUTO_BATCH_CPU

    setup = _setup(tiny_overrides + ["train.batch_size=auto"])
    assert setup.cfg.train.batch_size == AUTO_BATCH_CPU == setup.batch_size == 16
    assert setup.steps_per_epoch == 1  # 8 samples, 16 per step
    assert any("train.batch_size auto: 16" in note for note in setup.notes)


def test_training_probe_names_the_config_key_when_nothing_fits():
    from fissure.training.setup import probe_batch_size

    assert probe_batch_size(lambda n: n <= 48, 1024) == 16
    with pytest.raises(ConfigError, match="train.batch_size: auto"):
        probe_batch_size(lambda n: False)


def test_memory_probe_leaves_the_model_alone(tiny_config):
    from fissure.model import build_model
    from fissure.training.setup import memory_probe

    model = build_model("resnet18", False, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    fits = memory_probe(model, tiny_config, torch.device("cpu"))
    assert fits(2)
    assert torch.equal(rng, torch.get_rng_state())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_memory_probe_reports_out_of_memory(tiny_config, monkeypatch):
    from fissure.model import build_model
    from fissure.training.setup import memory_probe

    model = build_model("resnet18", False, 1)
    fits = memory_probe(model, tiny_config, torch.device("cpu"))

    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.nn.Module, "__call__", full)
    assert fits(4) is False


def test_cuda_branch_of_batch_auto_takes_the_probe(tiny_overrides, monkeypatch):
    from fissure.training import setup as setup_module
    from fissure.training.distributed import Dist

    cfg = load_config(None, tiny_overrides + ["train.batch_size=auto"])
    monkeypatch.setattr(setup_module, "memory_probe", lambda *a: lambda n: n <= 70)
    notes = []
    resolved = setup_module._resolve_batch_size(cfg, None, torch.device("cuda"), Dist(),
                                                1000, notes)
    assert resolved.train.batch_size == 32 and "halved" in notes[0]
    small = setup_module._resolve_batch_size(cfg, None, torch.device("cuda"), Dist(), 8, [])
    assert small.train.batch_size == 4  # never past the training set
    fixed = load_config(None, tiny_overrides)
    assert setup_module._resolve_batch_size(fixed, None, None, Dist(), 8, []) is fixed


def test_decoded_cache_on_request(tiny_overrides, tmp_path, monkeypatch):
    from fissure.data.decoded import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "decoded"))
    plain = _setup(tiny_overrides)
    assert plain.train_set.decoded is None and plain.val_set.decoded is None  # auto on CPU
    setup = _setup(tiny_overrides + ["data.cache=decoded"])
    assert setup.train_set.decoded.resize == 64 and setup.val_set.decoded.resize is None
    assert setup.train_set.decoded.root == tmp_path / "decoded"
    assert any("data.cache decoded" in note for note in setup.notes)
    first = setup.val_set[0]
    assert torch.equal(first["image"], setup.val_set[0]["image"])
    assert torch.equal(first["image"], plain.val_set[0]["image"])
    assert setup.val_set.decoded.counts.hits == 1
    crop = _setup(tiny_overrides + ["data.cache=decoded", "data.mode=crop"])
    assert crop.train_set.decoded.resize is None


def test_decoded_cache_auto_needs_cuda_and_disk(tiny_config, tmp_path, monkeypatch):
    from fissure.data import build_source
    from fissure.data.decoded import CACHE_ENV
    from fissure.training import setup as setup_module

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "decoded"))
    source = build_source(tiny_config.data)
    samples = (source.samples("train"), source.samples("val"))
    cuda, notes = torch.device("cuda"), []
    stores = setup_module._decoded_stores(tiny_config, source, samples, cuda, notes)
    assert stores[0] is not None and "data.cache auto" in notes[0]
    monkeypatch.setattr(setup_module, "free_bytes", lambda root: 1000)
    notes.clear()
    assert setup_module._decoded_stores(tiny_config, source, samples, cuda, notes) == (
        None, None)
    assert "no decoded store" in notes[0]


def test_batch_augmentation_hands_the_device_uint8_crops(tiny_overrides):
    from fissure.data import collate
    from fissure.training.augment import device_batch

    setup = _setup(tiny_overrides)
    assert setup.augment is None  # the CPU keeps augmenting per sample
    setup = build_setup(load_config(None, tiny_overrides + ["train.device=cpu"]),
                        _source(tiny_overrides), batch_augment=True)
    assert setup.augment is not None
    batch = collate([setup.train_set[i] for i in range(4)])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 64, 64)
    images, masks = device_batch(batch, setup.device, setup.augment, True)
    assert images.dtype == torch.float32 and images.shape == (4, 3, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert setup.val_set[0]["image"].dtype == torch.float32  # validation is unchanged


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_batch_auto_probes_and_augments_on_the_device(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.batch_size=auto", "train.device=cuda"])
    setup = build_setup(cfg, build_source(cfg.data))
    assert setup.augment is not None and setup.device.type == "cuda"
    size = setup.cfg.train.batch_size
    assert size >= 1 and size & (size - 1) == 0 and size <= len(setup.train_set)


def test_a_validation_split_without_cracks_is_refused_unless_loss_is_monitored(
    tiny_overrides, synth_root, tmp_path
):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    for mask in (root / "val" / "masks").iterdir():
        Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    overrides = tiny_overrides + [f"data.root={root}"]
    with pytest.raises(DataError, match=r"^val split: none of its \d+ masks holds a crack pixel"
                                        r", so validation IoU is undefined"):
        _setup(overrides)
    assert len(_setup(overrides + ["train.monitor=loss"]).val_set) > 0
