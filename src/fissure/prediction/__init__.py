"""Prediction on inspection photos of any size: masks, probabilities and measurements.

* :mod:`~fissure.prediction.options`: :class:`PredictOptions` and :class:`OutputOptions`,
  built once and passed down;
* :mod:`~fissure.prediction.predictor`: :class:`Predictor`, :func:`predict_many` and
  :func:`predict_image`, in memory;
* :mod:`~fissure.prediction.tiling`: which tiles an image takes (the checkpoint's defaults);
* :mod:`~fissure.prediction.tiles`: tile plan, blending and the batches shared by images;
* :mod:`~fissure.prediction.autobatch`: ``batch_size``, a number or ``auto``;
* :mod:`~fissure.prediction.threads`: decoding ahead of and writing behind the network;
* :mod:`~fissure.prediction.files`: :func:`predict_files`, from files and folders to masks,
  overlays and ``predictions.csv``/``.json``;
* :mod:`~fissure.prediction.measure`: :func:`measure_cracks`, crack area, length and width;
* :mod:`~fissure.prediction.cracks`: :func:`analyse_cracks`, one record per crack, outlines;
* :mod:`~fissure.prediction.export`: ONNX and TorchScript export (imported on its own).
"""

from .cracks import CrackAnalysis, CrackRecord, analyse_cracks
from .files import predict_files
from .inputs import Fetch, InputImage, find_inputs, output_names
from .measure import CrackMeasurements, measure_cracks
from .options import OutputOptions, PredictOptions
from .predictor import (
    ModelSource,
    Prediction,
    Predictor,
    as_predictor,
    predict_image,
    predict_many,
)

__all__ = [
    "CrackAnalysis",
    "CrackMeasurements",
    "CrackRecord",
    "analyse_cracks",
    "Fetch",
    "InputImage",
    "ModelSource",
    "OutputOptions",
    "PredictOptions",
    "Prediction",
    "Predictor",
    "as_predictor",
    "find_inputs",
    "measure_cracks",
    "output_names",
    "predict_files",
    "predict_image",
    "predict_many",
]
