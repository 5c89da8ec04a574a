"""Tests for ``batch_size``, a number or ``auto`` (fissure.prediction.autobatch).

The CUDA probe is the same code as on the CPU with ``probe=True``; a stand-in network that
raises ``torch.OutOfMemoryError`` above a batch size plays the device's memory.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fissure.errors import FissureError
from fissure.prediction.autobatch import (
    AUTO,
    CPU_BATCH,
    BatchSizes,
    check_batch_size,
    forward_fits,
    probe_batch_size,
)
from fissure.prediction.options import PredictOptions
from fissure.prediction.predictor import Predictor, predict_image
from fissure.runtime import InputPolicy


class _Memory(nn.Module):
    """A 1x1 conv with a BatchNorm that "runs out of memory" above ``capacity`` px."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.conv, self.norm, self.capacity = nn.Conv2d(3, 1, 1), nn.BatchNorm2d(1), capacity
        self.batches: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        if x.shape[0] * x.shape[-1] * x.shape[-2] > self.capacity:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return self.norm(self.conv(x))


@pytest.mark.parametrize("value", [AUTO, 1, 8, 300])
def test_good_batch_sizes(value: int | str) -> None:
    assert check_batch_size(value) == value
    assert PredictOptions(batch_size=value).batch_size == value


@pytest.mark.parametrize("value", [0, -3, "8", "big", 2.5, True])
def test_bad_batch_sizes_name_the_option(value: object) -> None:
    with pytest.raises(FissureError, match=r"--batch-size must be >= 1 or 'auto', got"):
        PredictOptions(batch_size=value)  # type: ignore[arg-type]


def test_prediction_probe_names_the_option_when_nothing_fits() -> None:
    assert probe_batch_size(lambda n: n <= 40, limit=256) == 16
    with pytest.raises(FissureError, match="not even one tile fits"):
        probe_batch_size(lambda n: False)


def test_forward_fits_catches_only_out_of_memory() -> None:
    net = _Memory(capacity=5 * 32 * 32)
    fits = forward_fits(net, (3, 32, 32), torch.device("cpu"))
    assert fits(4) and fits(5) and not fits(6)
    with pytest.raises(RuntimeError, match="channels"):
        forward_fits(net, (4, 32, 32), torch.device("cpu"))(1)


def test_auto_is_the_cpu_batch_off_cuda_and_a_number_is_kept() -> None:
    net = _Memory(capacity=10**9)
    cpu = torch.device("cpu")
    assert BatchSizes(AUTO, net, cpu, {})((3, 64, 64)) == CPU_BATCH == 8
    assert BatchSizes(3, net, cpu, {}, probe=True)((3, 64, 64)) == 3
    assert net.batches == []  # neither probed


def test_auto_probes_once_per_shape_and_key() -> None:
    net = _Memory(capacity=20 * 64 * 64)
    memo: dict[tuple, int] = {}
    sizes = BatchSizes(AUTO, net, torch.device("cpu"), memo, key=(True,), probe=True)
    assert sizes((3, 64, 64)) == 8  # 16 fits, 32 does not
    assert sizes((3, 32, 32)) == 32  # 64 fits, 128 does not
    probes = len(net.batches)
    assert sizes((3, 64, 64)) == 8 and len(net.batches) == probes
    again = BatchSizes(AUTO, net, torch.device("cpu"), memo, key=(True,), probe=True)
    assert again((3, 64, 64)) == 8 and len(net.batches) == probes
    other = BatchSizes(AUTO, net, torch.device("cpu"), memo, key=(False,), probe=True)
    assert other((3, 64, 64)) == 8 and len(net.batches) > probes


def test_a_predictor_probes_in_eval_mode_and_uses_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The path ``predict_many`` takes on CUDA, with the probe switched on on the CPU."""
    net = _Memory(capacity=20 * 64 * 64).train()
    predictor = Predictor(net, InputPolicy("crop", 64), amp=False)
    monkeypatch.setattr(BatchSizes, "__init__", _probing(BatchSizes.__init__))
    stats = net.norm.running_mean.clone()
    image = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    result = predict_image(predictor, image, PredictOptions(tile=64))
    assert result.tiles > 8
    served = net.batches[net.batches.index(32) + 1 :]  # after the probe's failing 32
    assert max(served) == 8 and sum(served) == result.tiles
    assert torch.equal(net.norm.running_mean, stats) and net.training
    assert list(predictor.batch_sizes.values()) == [8]


def _probing(init):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.probe = True

    return patched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_auto_probes_a_power_of_two() -> None:
    from fissure.model import build_model

    predictor = Predictor(build_model("resnet18").cuda().eval(), InputPolicy("crop", 256))
    size = predictor.batch_size(AUTO)((3, 512, 512))
    assert 1 <= size <= 128 and size & (size - 1) == 0
    assert predictor.batch_sizes == {((3, 512, 512), "cuda:0", True): size}


def test_the_batcher_asks_the_batch_once_per_shape() -> None:
    from fissure.prediction.batching import TileBatcher
    from fissure.prediction.tiles import TiledJob

    asked: list[tuple[int, ...]] = []
    seen: list[tuple[int, ...]] = []

    def limit(shape: tuple[int, ...]) -> int:
        asked.append(shape)
        return {64: 3, 32: 5}[shape[-1]]

    def forward(x: Tensor) -> Tensor:
        seen.append(tuple(x.shape))
        return torch.zeros(x.shape[0], 1, *x.shape[-2:])

    batcher = TileBatcher(forward, limit, False, lambda n: None)
    image = torch.zeros(3, 150, 150)
    jobs = [TiledJob(image, 64, 16), TiledJob(image, 32, 8), TiledJob(image, 64, 16)]
    done = [d for job in jobs for d in batcher.add(job)] + batcher.flush()
    assert len(done) == 3 and all(job.remaining == 0 for job in jobs)
    assert asked == [(3, 64, 64), (3, 32, 32)]
    assert max(b for b, *rest in seen if rest[-1] == 64) == 3
    assert max(b for b, *rest in seen if rest[-1] == 32) == 5
