"""The metrics document (``metrics.json``): every figure of an :class:`EvalResult`, each
named with its definition, at the tuned threshold and at 0.5.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import __version__
from ..config import DEFAULT_THRESHOLD
from ..metrics import (
    accuracy,
    classification_report,
    defined_ratio,
    detection_stats,
    f1,
    iou,
    precision,
    recall,
    specificity,
    tolerance_f1,
)
from .streaming import EvalResult

EMPTY_RULE = (
    "empty rule: a ratio whose denominator is 0 in an image scores 1 when that image has no "
    "false positive and no false negative (no true and no predicted crack), else 0"
)
NO_CRACK = "undefined: the split holds no crack pixels (see detection)"
UNDEFINED = "null where the denominator is 0 (e.g. no predicted crack pixel at that threshold)"
RATIOS = {
    "iou": ("TP/(TP+FP+FN)", iou),
    "precision": ("TP/(TP+FP)", precision),
    "recall": ("TP/(TP+FN)", recall),
    "f1": ("2TP/(2TP+FP+FN)", f1),
    "accuracy": ("(TP+TN)/(TP+FP+FN+TN)", accuracy),
    "specificity": ("TN/(TN+FP)", specificity),
}
# figures that measure overlap with true crack, meaningless when there is none
CRACK_FIGURES = {"iou", "precision", "recall", "f1"}


def _fig(definition: str, values: dict, note: str | None = None) -> dict:
    out = {"definition": definition, **values}
    if note is None and any(v is None for v in values.values()):
        note = UNDEFINED
    if note:
        out["note"] = note
    return out


def _columns(result: EvalResult) -> dict[str, float]:
    return {"at_0.5": DEFAULT_THRESHOLD, "at_tuned": result.threshold}


def _pixel(result: EvalResult, no_crack: bool) -> dict:
    cols = _columns(result)
    summaries = {key: result.meters[t].compute() for key, t in cols.items()}
    counts = {key: result.counts(t) for key, t in cols.items()}
    micro, per_image = {}, {}
    for name, (formula, fn) in RATIOS.items():
        values = {key: s[name] for key, s in summaries.items()}
        blank = no_crack and name in CRACK_FIGURES
        micro[name] = _fig(
            f"dataset-level (micro): {formula}, pixel counts summed over all images",
            dict.fromkeys(values) if blank else values,
            NO_CRACK if blank else None,
        )
        stats = {}
        for key, c in counts.items():
            v = fn(*c).numpy()
            stats[key] = {"mean": float(v.mean()), "std": float(v.std())} if v.size else None
        per_image[name] = _fig(
            f"per-image (macro): {formula} on each image, then mean and "
            f"population std over images; {EMPTY_RULE}",
            stats,
        )
    total = {key: {k: s[k] for k in ("tp", "fp", "fn", "tn")} for key, s in summaries.items()}
    return {
        "pixel_micro": micro,
        "pixel_per_image": per_image,
        "pixel_counts": _fig("pixels summed over all images; crack where prob > threshold", total),
    }


def _detection(result: EvalResult) -> dict:
    stats = {}
    for key, t in _columns(result).items():
        tp, _, fn, _ = result.counts(t)
        stats[key] = detection_stats(result.kept_areas(t), tp + fn, 1)
    first = stats["at_tuned"]
    out = {
        "definition": f"image-level: an image is flagged as cracked when it has a predicted "
        f"crack (8-connected) of >= {result.min_area} pixels (eval.min_area), as fissure "
        "predict counts cracks, and is truly cracked when its mask has any crack pixel",
        "min_area": result.min_area,
        **{k: first[k] for k in ("n_images", "n_cracked", "n_clean")},
        "counts": {key: {k: s[k] for k in ("tp", "fp", "fn", "tn")} for key, s in stats.items()},
    }
    formulas = {
        "precision": "TP/(TP+FP) over images",
        "recall": "TP/(TP+FN) over images",
        "f1": "2TP/(2TP+FP+FN) over images",
        "accuracy": "(TP+TN)/all images",
        "false_positive_rate": "FP/(FP+TN): share of crack-free images flagged",
    }
    for name, formula in formulas.items():
        src = "fpr" if name == "false_positive_rate" else name
        values = {key: s[src] for key, s in stats.items()}
        # without a cracked image, precision 0 would only say that every flag is false
        blank = first["n_cracked"] == 0 and name in CRACK_FIGURES
        note = "undefined: the split has no cracked image (see false_positive_rate)"
        out[name] = _fig(
            formula, dict.fromkeys(values) if blank else values, note if blank else None
        )
    return out


def _tolerance(result: EvalResult, no_crack: bool) -> dict:
    tol = result.tolerance
    values: dict[str, dict] = {"precision": {}, "recall": {}, "f1": {}}
    for key, t in _columns(result).items():
        mp, mt, npred, ntrue = result.tolerant[t].sums()
        f = float(
            tolerance_f1(*(torch.tensor(v) for v in (mp, mt, npred, ntrue)), empty=float("nan"))
        )
        values["precision"][key] = defined_ratio(mp, npred)
        values["recall"][key] = defined_ratio(mt, ntrue)
        values["f1"][key] = None if np.isnan(f) else f
    base = (
        f"{tol}-px tolerant, dataset-level: a predicted crack pixel is correct when a true "
        f"crack pixel lies within {tol} px (Euclidean disk), a true pixel is found when a "
        f"predicted one lies within {tol} px; counts summed over all images; "
    )
    formulas = {
        "precision": "correct predicted / predicted pixels",
        "recall": "found true / true pixels",
        "f1": "harmonic mean of the two",
    }
    out: dict = {"tolerance_px": tol}
    for name, formula in formulas.items():
        v = dict.fromkeys(values[name]) if no_crack else values[name]
        out[name] = _fig(base + formula, v, NO_CRACK if no_crack else None)
    return out


def _sweep(result: EvalResult, no_crack: bool) -> dict:
    s = result.sweep.compute()
    tol = s["tolerance"]
    defs = {
        "ods_f1": "ODS: best F1 over the swept thresholds, counts summed over all images",
        "ods_threshold": "the threshold giving the ODS F1 (lowest on ties)",
        "ois_f1": "OIS: each image at its own best-F1 threshold, counts summed, then F1",
        "ap": ("average precision: step-wise area under the dataset PR curve; exact: "
               "sklearn's average_precision_score on the per-threshold pixel counts, "
               "tolerant: the same sum over the swept thresholds"),
    }
    out: dict = {"n_thresholds": len(s["thresholds"]), "tolerance_px": tol}
    for name, text in defs.items():
        values = {"exact": s["exact"][name], f"tolerant_{tol}px": s["tolerant"][name]}
        blank = no_crack
        out[name] = _fig(
            text, dict.fromkeys(values) if blank else values, NO_CRACK if blank else None
        )
    out["pr_curve"] = {
        "definition": "dataset-level precision and recall at each swept threshold "
        "(crack where prob > threshold); null where undefined",
        "thresholds": s["thresholds"],
        **{
            mode: {"precision": s[key]["precision"], "recall": s[key]["recall"]}
            for mode, key in (("exact", "exact"), (f"tolerant_{tol}px", "tolerant"))
        },
    }
    return out


def metrics_document(result: EvalResult, header: dict | None = None) -> dict:
    """Every figure of ``result`` as a JSON-ready dict; each figure names its definition.

    Figures at two thresholds carry ``at_0.5`` and ``at_tuned`` values; sweep figures carry
    ``exact`` and ``tolerant_<k>px``. ``notes`` says in words what is undefined and why.
    """
    doc: dict = {"fissure_version": __version__, **(header or {})}
    doc["n_images"] = result.n_images
    doc["thresholds"] = {**_columns(result), **doc.get("thresholds", {})}
    n_true = sum(r[1] + r[3] for r in result.meters[result.threshold].rows)
    no_crack = n_true == 0
    doc.update(_pixel(result, no_crack))
    tp, fp, fn, tn = (doc["pixel_counts"]["at_tuned"][k] for k in ("tp", "fp", "fn", "tn"))
    doc["classification_report"] = {
        "definition": f"pixel level at the tuned threshold {result.threshold:g}, from the "
        "confusion matrix; support = true pixels of the class",
        **classification_report(tp, fp, fn, tn),
    }
    doc["detection"] = _detection(result)
    doc["tolerance"] = _tolerance(result, no_crack)
    doc["threshold_sweep"] = _sweep(result, no_crack)
    doc["skipped"] = [{"name": n, "reason": r} for n, r in result.skipped]
    doc["notes"] = _notes(result, doc, no_crack)
    doc["headline"] = _headline(doc, no_crack)
    return doc


def _notes(result: EvalResult, doc: dict, no_crack: bool) -> list[str]:
    notes = []
    det = doc["detection"]
    if result.n_images == 0:
        notes.append("no image could be evaluated")
    elif no_crack:
        fpr = det["false_positive_rate"]["at_tuned"]
        notes.append(
            "the split holds no crack pixels, so IoU, F1, precision and recall (pixel, "
            "tolerant and image-level), ODS, OIS and AP are undefined and reported as null, not "
            f"0; judge the model by image-level detection: {det['counts']['at_tuned']['fp']} of "
            f"{det['n_clean']} crack-free images flagged as cracked (false-positive rate "
            f"{fpr:.4f} at threshold {result.threshold:g}) and by pixel specificity"
        )
    if result.skipped:
        notes.append(f"{len(result.skipped)} image(s) could not be read and were skipped")
    if result.threshold == DEFAULT_THRESHOLD:
        notes.append("the tuned threshold is 0.5, so at_0.5 and at_tuned are the same")
    return notes


def _headline(doc: dict, no_crack: bool) -> dict:
    name = "detection.false_positive_rate" if no_crack else "pixel_micro.iou"
    section, key = name.split(".")
    fig = doc[section][key]
    return {
        "figure": name,
        "at": "at_tuned",
        "value": fig["at_tuned"],
        "definition": fig["definition"],
    }
