"""Tests for prediction over files with its background threads (fissure.prediction.files
with fissure.prediction.threads): the same bytes whatever the threads, input order kept,
failures raised in the caller with the file's name."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fissure.errors import FissureError
from fissure.prediction import files as files_module
from fissure.prediction.files import (
    encode_mask,
    encode_overlay,
    encode_probability,
    predict_files,
)
from fissure.prediction.options import OutputOptions, PredictOptions
from fissure.prediction.predictor import Predictor, predict_image, predict_many
from fissure.runtime import InputPolicy

SHAPES = [(70, 90), (700, 900), (33, 47), (64, 64), (120, 40)]
"""Small images in 64-px tiles and one in 512-px tiles, so both shapes share the run."""


def _predictor() -> Predictor:
    """A small fully convolutional net (3x3 context, so tiling matters) as a 64-px crop
    checkpoint would be, with about half the pixels crack."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    return Predictor(net.eval(), InputPolicy("crop", 64), amp=False)


def _photos(root: Path) -> list[Path]:
    root.mkdir()
    paths = []
    for i, (h, w) in enumerate(SHAPES):
        # smooth blobs rather than noise: masks of a few cracks, quick to measure
        coarse = np.random.default_rng(i).integers(0, 256, (6, 6, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        paths.append(root / f"img{i}.png")
        smooth.save(paths[-1])
    return paths


def _outputs(out: Path) -> dict[str, bytes]:
    """Every file's bytes, the output folder's path (in the tables) made the same."""
    return {p.name: p.read_bytes().replace(str(out).encode(), b"OUT") for p in out.iterdir()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Predictor, list[Path]]:
    root = tmp_path_factory.mktemp("pipeline")
    return _predictor(), _photos(root / "photos")


def test_the_files_are_the_same_bytes_whatever_the_threads(
    tmp_path: Path, photos: tuple[Predictor, list[Path]]
) -> None:
    predictor, paths = photos
    output = OutputOptions(save_prob=True, geojson=True)
    runs = {}
    for prefetch in (0, 1, 3):
        out = tmp_path / f"prefetch{prefetch}"
        options = PredictOptions(device="cpu", prefetch=prefetch)
        predict_files(predictor, paths, out, options, output, progress=False)
        runs[prefetch] = _outputs(out)
    assert runs[0] == runs[1] == runs[3]
    assert len(runs[0]) == 5 * 4 + 3
    masks = [np.asarray(Image.open(tmp_path / "prefetch3" / f"img{i}.png")) for i in range(5)]
    assert all(0.1 < (m > 0).mean() < 0.9 for m in masks)  # masks worth comparing


def test_the_files_are_what_each_image_alone_gives(
    tmp_path: Path, photos: tuple[Predictor, list[Path]]
) -> None:
    """Batches of one tile: each tile's logits cannot depend on the other tiles in a batch,
    so every byte must equal the unthreaded one-image-at-a-time path's."""
    predictor, paths = photos
    options = PredictOptions(device="cpu", batch_size=1)
    records = predict_files(predictor, paths, tmp_path, options, OutputOptions(save_prob=True),
                            progress=False)
    alone = PredictOptions(batch_size=1, prefetch=0)
    for i, path in enumerate(paths):
        rgb = np.array(Image.open(path).convert("RGB"))
        expected = predict_image(predictor, rgb, alone)
        assert (tmp_path / f"img{i}.png").read_bytes() == encode_mask(expected.mask)
        prob = encode_probability(expected.probability)
        assert (tmp_path / f"img{i}_prob.png").read_bytes() == prob
        overlay = encode_overlay(rgb, expected.mask)
        assert (tmp_path / f"img{i}_overlay.jpg").read_bytes() == overlay
        assert records[i]["tile"] == expected.tile
    assert [r["tile"] for r in records] == [64, 512, 64, 64, 64]
    assert [Path(r["image"]).name for r in records] == [p.name for p in paths]


def test_decoding_and_writing_run_in_their_threads(
    tmp_path: Path, photos: tuple[Predictor, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, paths = photos
    seen: dict[str, set[str]] = {"decode": set(), "write": set()}

    def spy(name: str, fn):
        def wrapped(*args, **kwargs):
            seen[name].add(threading.current_thread().name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(files_module, "decode_image", spy("decode", files_module.decode_image))
    monkeypatch.setattr(files_module, "encode_mask", spy("write", files_module.encode_mask))
    predict_files(predictor, paths[:2], tmp_path, PredictOptions(device="cpu"), progress=False)
    assert seen == {"decode": {"fissure-prefetch"}, "write": {"fissure-writer"}}
    assert {p.name for p in tmp_path.glob("img*.png")} == {"img0.png", "img1.png"}


def test_a_file_that_cannot_be_written_is_named(
    tmp_path: Path, photos: tuple[Predictor, list[Path]]
) -> None:
    predictor, paths = photos
    out = tmp_path / "out"
    (out / "img2.png").mkdir(parents=True)  # a folder where the mask should go
    with pytest.raises(FissureError, match=r"img2\.png \(from .*img2\.png\): .*Is a directory"):
        predict_files(predictor, paths, out, PredictOptions(device="cpu"), progress=False)
    assert (out / "img0.png").is_file() and not (out / "predictions.csv").exists()


def test_an_image_that_cannot_be_decoded_is_named_in_order(
    tmp_path: Path, photos: tuple[Predictor, list[Path]]
) -> None:
    # decoded in the read-ahead thread: its failure comes back as its own row, in order
    predictor, paths = photos
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    records = predict_files(predictor, [paths[0], broken, paths[1]], tmp_path / "out",
                            PredictOptions(device="cpu"), progress=False)
    assert [Path(r["image"]).name for r in records] == [paths[0].name, "broken.png",
                                                         paths[1].name]
    assert [r["error"] is None for r in records] == [True, False, True]
    assert records[1]["error"].startswith(f"{broken}: not a readable image")


def test_stopping_early_stops_the_read_ahead(photos: tuple[Predictor, list[Path]]) -> None:
    predictor, _ = photos
    read: list[int] = []

    def images():
        for i in range(1000):
            read.append(i)
            yield i, np.zeros((40, 40, 3), np.uint8)

    results = predict_many(predictor, images(), PredictOptions(prefetch=2, batch_size=1))
    assert next(results)[0] == 0
    results.close()
    assert not any(t.name == "fissure-prefetch" for t in threading.enumerate())
    assert len(read) < 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_images_go_over_pinned_and_predict_as_on_the_cpu(
    tmp_path: Path, photos: tuple[Predictor, list[Path]]
) -> None:
    from fissure.data.transforms import image_to_tensor
    from fissure.prediction.predictor import image_on

    predictor, paths = photos
    rgb = np.array(Image.open(paths[1]).convert("RGB"))
    on_gpu = image_on(torch.device("cuda"), rgb)
    assert on_gpu.is_cuda and on_gpu.shape == (3, *rgb.shape[:2])
    torch.testing.assert_close(on_gpu.cpu(), image_to_tensor(rgb), rtol=0, atol=1e-6)
    cuda = Predictor(copy.deepcopy(predictor.model).cuda(), predictor.policy, amp=False)
    records = predict_files(cuda, paths, tmp_path / "gpu", PredictOptions(), progress=False)
    assert [r["tile"] for r in records] == [64, 512, 64, 64, 64]
    for i, path in enumerate(paths):
        expected = predict_image(predictor, np.array(Image.open(path).convert("RGB")))
        got = np.asarray(Image.open(tmp_path / "gpu" / f"img{i}.png")) > 0
        assert (got != expected.mask).mean() < 1e-3
