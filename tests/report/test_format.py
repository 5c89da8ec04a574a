"""The shared number format and JSON writer."""

import json
import math

import numpy as np
import torch

from fissure import report
from fissure.report.format import fmt, write_json


def test_fmt():
    assert fmt(None) == "undefined"
    assert fmt(0.123456) == "0.1235"
    assert fmt(0.5, 2) == "0.50"
    assert fmt(12) == "12" and fmt("x") == "x"


def test_write_json_writes_undefined_as_null(tmp_path):
    data = {"nan": math.nan, "inf": -math.inf, "t": torch.tensor([1, 2]), "np": np.float64(0.5),
            "nested": {1: (math.nan, 2.0)}}
    write_json(data, tmp_path / "x.json")
    text = (tmp_path / "x.json").read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {"nan": None, "inf": None, "t": [1, 2], "np": 0.5,
                                "nested": {"1": [None, 2.0]}}


def test_still_importable_from_the_package():
    assert report.fmt is fmt and report.write_json is write_json
