"""Export a checkpoint's model to ONNX or TorchScript, to run it without fissure.

Both graphs take ``image`` ``(N, 3, H, W)`` float32, normalised with the checkpoint's
ImageNet mean and std, with N, H and W free, and return ``probability`` ``(N, 1, H, W)``:
the sigmoid of the logits, at the input's size. Threshold it with the checkpoint's
threshold; that, the normalisation and the input policy travel inside the file (ONNX
metadata properties / a ``fissure.json`` extra file in the TorchScript archive).

Both wrap the model rather than repeat its wiring: TorchScript compiles
``ResNetUNet.forward`` as it is, and the ONNX graph is the model traced behind a padding
step of its own. Padding to a multiple of 32 is part of the graph. The ONNX graph reflects
the border, as the model does for any side of at least 32 px; smaller sides need padding by
the caller. Inputs shrunk or tiled the way ``fissure predict`` does are the caller's
business too.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import __version__
from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import FissureError
from ..extras import require
from ..model import STRIDE, ResNetUNet
from ..writes import replacing

FORMATS = ("onnx", "torchscript")
OPSET = 18
MIN_SIDE = 32
CHECK_SIZES = ((1, 64, 96), (2, 96, 128), (1, 70, 45))
"""``(N, H, W)`` inputs an export is checked on; the last is no multiple of 32."""
TOLERANCE = 1e-4


class _Probabilities(nn.Module):
    """``sigmoid(model(x))``: what both export formats compute.

    ``ResNetUNet.forward``, padding included, compiles with ``torch.jit.script``, so the
    TorchScript export scripts this wrapper as it is.

    Shapes:
        x: (N, 3, H, W) float, normalised.
        returns: (N, 1, H, W) float32 probabilities.
    """

    def __init__(self, model: ResNetUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """Crack probabilities for ``x``."""
        return torch.sigmoid(self.model(x))


class _OnnxProbabilities(_Probabilities):
    """:class:`_Probabilities` with the padding done where ``torch.export`` can see it.

    The model pads only when a side is not a multiple of 32; traced on one example size
    that branch is frozen for every size. Padding here, always, to ``ceil(h / 32) * 32``
    gives sizes the exporter proves divisible by 32, so the model's branch folds away for
    all sizes. Reflection needs sides of at least :data:`MIN_SIDE`.

    Shapes:
        x: (N, 3, H, W) float, normalised; H, W >= 32.
        returns: (N, 1, H, W) float32 probabilities.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Crack probabilities for ``x``."""
        height, width = x.shape[-2], x.shape[-1]
        pad_h = (height + STRIDE - 1) // STRIDE * STRIDE - height
        pad_w = (width + STRIDE - 1) // STRIDE * STRIDE - width
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return torch.sigmoid(self.model(x)[..., :height, :width])


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and its largest deviation from PyTorch on ``CHECK_SIZES``."""

    path: Path
    format: str
    max_abs_diff: float | None


def export_metadata(ckpt: Checkpoint) -> dict[str, str]:
    """What a deployment needs besides the graph, as strings (ONNX metadata is str -> str)."""
    return {
        "fissure.version": __version__,
        "fissure.output": "probability",
        "fissure.threshold": str(float(ckpt.threshold)),
        "fissure.mean": json.dumps(list(ckpt.mean)),
        "fissure.std": json.dumps(list(ckpt.std)),
        "fissure.input_mode": ckpt.policy.mode,
        "fissure.input_size": str(ckpt.policy.size),
        "fissure.encoder": ckpt.encoder,
    }


def _export_onnx(model: ResNetUNet, out: Path, metadata: dict[str, str], opset: int) -> None:
    import onnx
    height = torch.export.Dim("height", min=MIN_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE)
    # The example size is deliberately no multiple of 32, and the batch is not 1: torch.export
    # would specialise a dimension of size 1.
    example = torch.randn(2, 3, 70, 45)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _OnnxProbabilities(model).eval(),
            (example,),
            str(out),
            dynamo=True,
            input_names=["image"],
            output_names=["probability"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch"), 2: height, 3: width}},
            opset_version=opset,
            verbose=False,
            external_data=False,
        )
    graph = onnx.load(str(out))
    onnx.helper.set_model_props(graph, metadata)
    onnx.save(graph, str(out))


def _export_torchscript(model: ResNetUNet, out: Path, metadata: dict[str, str]) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but still the format that
        # loads from C++ and older runtimes without Python.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_Probabilities(model).eval())
        torch.jit.save(
            scripted, str(out), _extra_files={"fissure.json": json.dumps(metadata).encode()}
        )


def _onnx_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x.numpy()})[0]


def _torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: loaded(x).numpy()


def check_export(
    path: str | Path,
    fmt: str,
    model: ResNetUNet,
    sizes: Sequence[tuple[int, int, int]] = CHECK_SIZES,
) -> float:
    """Largest ``|exported - sigmoid(model)|`` over random inputs of ``(N, H, W)`` ``sizes``.

    ``path`` holds the export in format ``fmt``; it is run by onnxruntime or ``torch.jit``.
    """
    runner = _onnx_runner(Path(path)) if fmt == "onnx" else _torchscript_runner(Path(path))
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for n, h, w in sizes:
        x = torch.randn(n, 3, h, w, generator=generator)
        with torch.inference_mode():
            expected = torch.sigmoid(model(x)).numpy()
            got = np.asarray(runner(x))
        if got.shape != expected.shape:
            raise FissureError(
                f"{path}: exported graph returned {got.shape} for input "
                f"{tuple(x.shape)}, expected {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_model(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    fmt: str = "onnx",
    *,
    opset: int = OPSET,
    verify: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` as ``fmt`` (``onnx`` or ``torchscript``).

    With ``verify`` the written file is run (onnxruntime for ONNX, skipped when it is not
    installed) on ``CHECK_SIZES`` and must agree with PyTorch within ``TOLERANCE``.
    """
    if fmt not in FORMATS:
        raise FissureError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx" and opset < 17:
        raise FissureError(f"--opset must be at least 17, got {opset}")
    if fmt == "onnx":  # torch.onnx imports onnxscript deep inside; say so before that
        require("export", "ONNX export", ("onnx", "onnxscript"))
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = ckpt.build_model("cpu")
    out = Path(out)
    # Written and checked beside ``out``, renamed over it only once it passes: a failed
    # write or check leaves an earlier export at ``out`` as it was.
    try:
        with replacing(out, suffix=f".tmp{out.suffix}") as tmp:
            diff = _write_checked(model, tmp, fmt, export_metadata(ckpt), opset, verify)
            if diff is not None and diff > TOLERANCE:
                raise FissureError(
                    f"{out}: exported model differs from PyTorch by {diff:.2e} "
                    f"(more than {TOLERANCE:g}); nothing written"
                )
    except OSError as exc:
        raise FissureError(f"{out}: could not write the export ({exc})") from exc
    return ExportResult(out, fmt, diff)


def _write_checked(model: ResNetUNet, path: Path, fmt: str, metadata: dict[str, str],
                   opset: int, verify: bool) -> float | None:
    """Write ``fmt`` to ``path``; with ``verify``, its largest difference from PyTorch."""
    if fmt == "onnx":
        _export_onnx(model, path, metadata, opset)
    else:
        _export_torchscript(model, path, metadata)
    if verify and (fmt != "onnx" or _has_onnxruntime()):
        return check_export(path, fmt, model)
    return None


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
