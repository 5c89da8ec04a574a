"""The public crack datasets that ``fissure data get`` fetches.

Each :class:`PublicDataset` names the archive its owners publish (pinned to a commit, so
the bytes do not drift with a branch), its licence and citation, and a function that turns
the archive into fissure's folder layout (:mod:`fissure.data.archives`).
:func:`get_dataset` downloads (resumable, see :mod:`fissure.data.download`), checks the
SHA-256, converts, and writes a README beside the data recording the source URL, the
licence and the SHA-256 of what was downloaded.
"""

from __future__ import annotations

import re
import shutil
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

from ..errors import DataError, FissureError
from .archives import (
    CFD_COMMIT,
    DEEPCRACK_COMMIT,
    DEEPCRACK_SPLITS,
    KOENIG_SPLIT,
    convert_cfd,
    convert_deepcrack,
)
from .download import download, sha256_file

Converter = Callable[[zipfile.ZipFile, str, Path], dict[str, int]]
"""``(archive, label for messages, empty output folder) -> pairs per split``."""

DOWNLOAD_DIR = ".fissure-download"  # inside the output folder: the archive and its .part
STAGING_DIR = ".fissure-staging"  # inside the output folder: the conversion until complete
README = "README.md"
_SHA_LINE = "- SHA-256 of the download:"
_URL_LINE = "- Source:"


@dataclass(frozen=True)
class PublicDataset:
    """One downloadable dataset: where it comes from, under which terms, how to convert it.

    ``sha256`` is the expected SHA-256 of the downloaded archive; None means not pinned,
    in which case the first download's SHA-256 is recorded and later downloads into the
    same folder are held to it. ``layout`` lists the paths a complete conversion leaves.
    """

    name: str
    title: str
    url: str
    homepage: str
    licence: str
    citation: str
    archive: str
    sha256: str | None
    layout: tuple[str, ...]
    description: str
    convert: Converter


@dataclass(frozen=True)
class GetResult:
    """What :func:`get_dataset` left: the folder, the archive's SHA-256, pairs per split."""

    out: Path
    sha256: str
    counts: dict[str, int]
    downloaded: bool


# --------------------------------------------------------------------------- catalogue

_NON_COMMERCIAL = ("for non-commercial research purposes only (the dataset's own README); "
                   "ask the authors before any other use")

CATALOGUE: Mapping[str, PublicDataset] = MappingProxyType({
    "cfd": PublicDataset(
        name="cfd",
        title="CrackForest (CFD)",
        url=f"https://github.com/cuilimeng/CrackForest-dataset/archive/{CFD_COMMIT}.zip",
        homepage="https://github.com/cuilimeng/CrackForest-dataset",
        licence="Made available " + _NON_COMMERCIAL,
        citation=("Shi, Cui, Qi, Meng, Chen, \"Automatic road crack detection using random "
                  "structured forests\", IEEE Transactions on Intelligent Transportation "
                  "Systems 17(12), 2016"),
        archive="CrackForest-dataset.zip",
        # GitHub builds archive zips on request and does not promise stable bytes, so no
        # hash is pinned: the first download's SHA-256 is recorded in the README instead.
        sha256=None,
        layout=("images", "masks", *(f"split_koenig_{s}.txt" for s in KOENIG_SPLIT)),
        description=(
            "118 pavement photos, 480x320 RGB JPEG, with pixel crack masks.\n\n"
            "- `images/NNN.jpg`: the repository's `image/NNN.jpg`, byte for byte.\n"
            "- `masks/NNN.png`: 8-bit PNG, 0 = background, 255 = crack, converted from "
            "`groundTruth/NNN.mat` (struct `groundTruth`, label image `Segmentation`): "
            "labels 2 and 4 are crack, 1 and 3 background (3 marks regions enclosed by "
            "cracks).\n"
            "- `split_koenig_{train,val,test}.txt`: the split of Koenig et al., 64 / 7 / 46 "
            "ids, one a line (test = 073..118; 042 left out as a wrong ground truth). Use "
            "it whenever a number on CFD is reported; `configs/cfd.yaml` reads it."),
        convert=convert_cfd,
    ),
    "deepcrack": PublicDataset(
        name="deepcrack",
        title="DeepCrack",
        url=(f"https://github.com/yhlleo/DeepCrack/raw/{DEEPCRACK_COMMIT}"
             "/dataset/DeepCrack.zip"),
        homepage="https://github.com/yhlleo/DeepCrack",
        licence=("Non-commercial research and education only, as its authors state; ask them "
                 "before any other use"),
        citation=("Liu, Yao, Lu, Xie, Li, \"DeepCrack: A deep hierarchical feature learning "
                  "architecture for crack segmentation\", Neurocomputing 338, 2019"),
        archive="DeepCrack.zip",
        sha256=None,  # not pinned yet: recorded from the first download, as for cfd
        layout=tuple(f"{s}/{k}" for s in DEEPCRACK_SPLITS for k in ("images", "masks")),
        description=(
            "537 crack photos, 544x384, with pixel masks, in the authors' split: "
            "300 train, 237 test.\n\n"
            "- `{train,test}/images/NAME.jpg`: the archive's `{train,test}_img/`, byte for "
            "byte.\n"
            "- `{train,test}/masks/NAME.png`: 8-bit PNG, 0 = background, 255 = crack, from "
            "the archive's `{train,test}_lab/` binarised at grey level > 127.\n"
            "- There is no validation split: train with `data.val_fraction` to carve one "
            "out of `train/`."),
        convert=convert_deepcrack,
    ),
})


def dataset(name: str) -> PublicDataset:
    """The catalogue entry called ``name``; a :class:`DataError` lists the known names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(CATALOGUE)}") from None


def notice(entry: PublicDataset, out: Path) -> str:
    """What is shown before downloading: the dataset, its source, licence and citation."""
    return (f"{entry.title}: {entry.description.splitlines()[0]}\n"
            f"  source:  {entry.url}\n"
            f"  licence: {entry.licence}\n"
            f"  cite:    {entry.citation}\n"
            f"  into:    {out}")


# --------------------------------------------------------------------------- README record


def dataset_readme(entry: PublicDataset, sha256: str, counts: Mapping[str, int]) -> str:
    """The README written beside the data: provenance, licence, SHA-256 and layout."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pairs = ", ".join(f"{split} {n}" for split, n in counts.items())
    return (f"# {entry.title}\n\n"
            f"Downloaded and converted by `fissure data get {entry.name}` on {when}.\n\n"
            f"{_URL_LINE} {entry.url}\n"
            f"- Homepage: {entry.homepage}\n"
            f"- Licence: {entry.licence}.\n"
            f"- Cite: {entry.citation}.\n"
            f"{_SHA_LINE} `{sha256}`\n"
            f"- Pairs: {pairs}\n\n"
            f"{entry.description}\n")


def recorded_sha256(out: Path, url: str) -> str | None:
    """The SHA-256 that ``out/README.md`` records for a download of ``url``, if any.

    A README recording another URL (another dataset, or an older pinned commit) does not
    count: its hash says nothing about what ``url`` serves.
    """
    path = Path(out) / README
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    source = re.search(rf"^{re.escape(_URL_LINE)} (\S+)$", text, re.MULTILINE)
    digest = re.search(rf"^{re.escape(_SHA_LINE)} `([0-9a-f]{{64}})`$", text, re.MULTILINE)
    if source is None or digest is None or source.group(1) != url:
        return None
    return digest.group(1)


def is_complete(entry: PublicDataset, out: Path) -> bool:
    """Whether ``out`` holds a finished conversion of ``entry`` (README and every layout path)."""
    out = Path(out)
    return (recorded_sha256(out, entry.url) is not None
            and all((out / path).exists() for path in entry.layout))


# --------------------------------------------------------------------------- get


def get_dataset(name: str | PublicDataset, out: str | Path | None = None, *,
                url: str | None = None, sha256: str | None = None, force: bool = False,
                confirm: Callable[[str], bool] | None = None, progress: bool = True,
                log: Callable[[str], None] | None = None) -> GetResult:
    """Download a public dataset, check it and convert it into ``out`` (``data/NAME``).

    ``url`` and ``sha256`` override the catalogue entry's (tests serve their own archive).
    The notice (source, licence, citation) goes to ``log``; ``confirm`` receives it and a
    False answer cancels. A folder that already holds the dataset is left as it is unless
    ``force``. A download whose SHA-256 differs from the expected one (``sha256``, the
    catalogue's pin, or the one recorded by an earlier download into ``out``) is refused
    with a :class:`DataError` unless ``force``. An interrupted download resumes next time.
    """
    entry = dataset(name) if isinstance(name, str) else name
    if url and url != entry.url:
        # the catalogue's pin is for its own URL, not for whatever else is served
        entry = replace(entry, url=url, sha256=None)
    if sha256:
        entry = replace(entry, sha256=sha256.lower())
    out = Path(out) if out is not None else Path("data") / entry.name
    say = log or (lambda _line: None)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    recorded = recorded_sha256(out, entry.url)
    if is_complete(entry, out) and not force:
        say(f"{out} already holds {entry.title} (SHA-256 {recorded}); "
            "pass --force to download it again")
        return GetResult(out, recorded or "", _recorded_counts(out), downloaded=False)
    if not force:
        _refuse_foreign(entry, out)
    text = notice(entry, out)
    say(text)
    if confirm is not None and not confirm(text):
        raise FissureError(f"{entry.name}: not downloaded, the licence was not accepted")
    archive = download(entry.url, out / DOWNLOAD_DIR / entry.archive, progress=progress)
    try:
        digest = _check_sha256(entry, archive, entry.sha256 or recorded, force, say)
        counts = _convert(entry, archive, digest, out)
    finally:
        # A finished archive is never reused (a later run downloads afresh), so it goes
        # whether the conversion worked or not; only an unfinished .part is kept.
        shutil.rmtree(out / DOWNLOAD_DIR, ignore_errors=True)
    pairs = ", ".join(f"{split} {n}" for split, n in counts.items())
    say(f"wrote {entry.title} to {out}: {pairs} (SHA-256 {digest}, recorded in {out / README})")
    return GetResult(out, digest, counts, downloaded=True)


def _refuse_foreign(entry: PublicDataset, out: Path) -> None:
    """Refuse to replace folders in ``out`` that no ``fissure data get`` wrote.

    Such paths (no README recording a download beside them) are the user's own data.
    """
    readme = out / README
    if readme.is_file() and _SHA_LINE in readme.read_text(encoding="utf-8", errors="replace"):
        return
    clash = sorted({Path(p).parts[0] for p in (README, *entry.layout)
                    if (out / Path(p).parts[0]).exists()})
    if clash:
        raise DataError(f"{out}: already holds {', '.join(clash)}, not written by fissure data "
                        "get; choose another --out, or pass --force to replace them")


def _check_sha256(entry: PublicDataset, archive: Path, expected: str | None, force: bool,
                  say: Callable[[str], None]) -> str:
    """The archive's SHA-256; a mismatch with ``expected`` is refused unless ``force``."""
    digest = sha256_file(archive)
    if expected is None or digest == expected:
        return digest
    if not force:
        raise DataError(f"{entry.url}: the download changed: SHA-256 {digest}, expected "
                        f"{expected}; check the source, then pass --force to accept it")
    say(f"warning: {entry.url}: SHA-256 {digest} differs from the expected {expected}; "
        "accepted (--force)")
    return digest


def _convert(entry: PublicDataset, archive: Path, digest: str, out: Path) -> dict[str, int]:
    """Convert ``archive`` in a staging folder, then move the result into ``out``.

    A failed conversion leaves ``out`` as it was. The README goes first and comes back
    last, so a folder caught half-replaced never counts as complete. Only the paths the
    dataset produces are replaced; anything else in ``out`` stays.
    """
    staging = out / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    label = f"{entry.url} ({archive.name})"
    try:
        with zipfile.ZipFile(archive) as zf:
            counts = entry.convert(zf, label, staging)
        (out / README).unlink(missing_ok=True)
        for path in sorted(staging.iterdir()):
            target = out / path.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            path.replace(target)
        (out / README).write_text(dataset_readme(entry, digest, counts), encoding="utf-8")
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{label}: not a valid zip archive ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _recorded_counts(out: Path) -> dict[str, int]:
    """Pairs per split as the README of an earlier conversion records them."""
    text = (out / README).read_text(encoding="utf-8", errors="replace")
    line = re.search(r"^- Pairs: (.*)$", text, re.MULTILINE)
    found = re.findall(r"(\w+) (\d+)", line.group(1)) if line else []
    return {split: int(n) for split, n in found}
