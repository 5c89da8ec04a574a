"""``fissure data get``: download with resume and checksum, and conversion of each source.

Every archive is built here, laid out as its source lays it out, and served from a local
HTTP server on 127.0.0.1 that honours ``Range`` and can drop a connection mid-file. Nothing
goes beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.io import savemat

from fissure.data import FolderSource
from fissure.data.download import download, part_path
from fissure.data.public import (
    CATALOGUE,
    CFD_COMMIT,
    DOWNLOAD_DIR,
    KOENIG_SPLIT,
    STAGING_DIR,
    get_dataset,
    recorded_sha256,
)
from fissure.errors import DataError, FissureError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHARED_CFD = Path(__file__).resolve().parents[3] / "shared" / "data" / "cfd"
CFD_TOP = f"CrackForest-dataset-{CFD_COMMIT}/"  # how GitHub names an archive's top folder
CFD_IDS = [f"{i:03d}" for i in range(1, 119)]
W, H = 12, 8  # tiny stand-ins for CFD's 480x320


# --------------------------------------------------------------------------- HTTP server


@dataclass
class Served:
    """What the test server serves and what it was asked."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)  # paths whose next GET stops halfway
    ranges: bool = True  # False: ignore Range and always send the whole file
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def _handler(state: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a stuck client cannot hold the server thread

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            asked = self.headers.get("Range")
            state.requests.append((self.path, asked))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if (
                asked and state.ranges) else 0
            if start >= len(body) > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            rest = body[start:]
            if self.path in state.cut_once:
                # announce the whole length, send half, hang up: a dropped connection
                state.cut_once.discard(self.path)
                rest = rest[: len(rest) // 2]
            self.wfile.write(rest)

    return Handler


@pytest.fixture()
def served(monkeypatch) -> Iterator[Served]:
    # urllib would send 127.0.0.1 through a configured proxy; make sure it cannot.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    state = Served()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    # bounded: stops by itself even if teardown never runs
    deadline = threading.Timer(120, server.shutdown)
    deadline.daemon = True
    deadline.start()
    try:
        yield state
    finally:
        deadline.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- archives


def _jpeg(seed: int, size: tuple[int, int] = (W, H)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _cfd_labels(seed: int) -> np.ndarray:
    """Labels 1..4 as CFD uses them: 2 and 4 crack, 3 a region enclosed by cracks."""
    labels = np.ones((H, W), np.uint8)
    row = seed % H
    labels[row, :] = 2
    labels[:, seed % W] = 4
    labels[(row + 2) % H, 3:6] = 3
    return labels


def _mat(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # a dict is saved as a MATLAB struct: groundTruth.Segmentation, groundTruth.Boundaries
    savemat(buffer, {"groundTruth": {"Segmentation": labels,
                                     "Boundaries": labels > 1}})
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _cfd_members(ids=CFD_IDS, top: str = CFD_TOP) -> dict[str, bytes]:
    """The repository's files as its GitHub archive holds them."""
    members = {f"{top}README.md": b"CrackForest Dataset\n"}
    for i, stem in enumerate(ids):
        members[f"{top}image/{stem}.jpg"] = _jpeg(i)
        members[f"{top}groundTruth/{stem}.mat"] = _mat(_cfd_labels(i))
        members[f"{top}seg/{stem}.seg"] = b"format ascii cr\n"
    return members


@pytest.fixture(scope="module")
def cfd_zip() -> bytes:
    return _zip(_cfd_members())


GREYS = np.array([0, 5, 100, 127, 128, 200, 250, 255], np.uint8)


def _label(seed: int, suffix: str) -> bytes:
    """A label image with grey levels on both sides of 127, as PNG or JPEG."""
    grey = np.tile(GREYS, (6, 2))  # 16x6
    buffer = io.BytesIO()
    Image.fromarray(np.roll(grey, seed, axis=1)).save(
        buffer, format="PNG" if suffix == ".png" else "JPEG", quality=100)
    return buffer.getvalue()


def _deepcrack_members() -> dict[str, bytes]:
    """DeepCrack.zip: {train,test}_img/NAME.jpg with {train,test}_lab/NAME.png at the top."""
    members = {}
    names = {"train": ["11125-1", "11125-2", "7Q3A9060-1"], "test": ["11215-5", "11290-3"]}
    for split, stems in names.items():
        for i, stem in enumerate(stems):
            members[f"{split}_img/{stem}.jpg"] = _jpeg(i, size=(16, 6))
            suffix = ".jpg" if stem == "11290-3" else ".png"  # a JPEG label: grey levels
            members[f"{split}_lab/{stem}{suffix}"] = _label(i, suffix)
    members["__MACOSX/train_img/._11125-1.jpg"] = b"\0resource fork"
    return members


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- CrackForest


def test_koenig_split_is_the_published_one():
    assert [len(KOENIG_SPLIT[s]) for s in ("train", "val", "test")] == [64, 7, 46]
    every = [i for ids in KOENIG_SPLIT.values() for i in ids]
    assert len(set(every)) == 117 and "042" not in every
    assert KOENIG_SPLIT["test"] == tuple(f"{i:03d}" for i in range(73, 119))
    if (SHARED_CFD / "split_koenig_val.txt").is_file():  # the copy the benchmarks use
        for split, ids in KOENIG_SPLIT.items():
            assert (SHARED_CFD / f"split_koenig_{split}.txt").read_text().split() == list(ids)


def test_cfd_is_converted_into_the_cfd_layout(served, cfd_zip, tmp_path):
    served.files["/cfd.zip"] = cfd_zip
    lines: list[str] = []
    out = tmp_path / "cfd"
    result = get_dataset("cfd", out, url=served.url("/cfd.zip"), progress=False,
                         log=lines.append)

    assert result.downloaded and result.sha256 == _sha(cfd_zip)
    assert result.counts == {"all": 118, "train": 64, "val": 7, "test": 46}
    members = _cfd_members()
    for i, stem in enumerate(CFD_IDS):
        assert (out / "images" / f"{stem}.jpg").read_bytes() == members[
            f"{CFD_TOP}image/{stem}.jpg"]  # photos are copied, not re-encoded
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, np.isin(_cfd_labels(i), (2, 4)))
    for split, ids in KOENIG_SPLIT.items():
        assert (out / f"split_koenig_{split}.txt").read_text().split() == list(ids)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "images", "masks", *(f"split_koenig_{s}.txt" for s in
                                           ("test", "train", "val"))]
    readme = (out / "README.md").read_text()
    assert served.url("/cfd.zip") in readme and _sha(cfd_zip) in readme
    assert "non-commercial research" in readme and "Shi, Cui, Qi" in readme
    assert "non-commercial research" in lines[0] and served.url("/cfd.zip") in lines[0]

    # the shipped CFD config reads exactly this folder
    cfg = yaml.safe_load((CONFIGS / "cfd.yaml").read_text())
    src = FolderSource(out, split_files=cfg["data"]["split_files"])
    assert [s.name for s in src.samples("val")] == list(KOENIG_SPLIT["val"])
    assert len(src.samples("train")) == 64 and len(src.samples("test")) == 46


def test_shipped_configs_point_where_data_get_writes():
    cfg = yaml.safe_load((CONFIGS / "cfd.yaml").read_text())
    assert cfg["data"]["root"] == "data/cfd"
    for path in CONFIGS.glob("*.yaml"):
        assert "../shared" not in path.read_text(), path.name


def test_a_cfd_archive_missing_split_ids_is_refused(served, tmp_path):
    served.files["/cfd.zip"] = _zip(_cfd_members(ids=CFD_IDS[:-1]))
    with pytest.raises(DataError, match=r"/cfd.zip.*Koenig split missing.*: 118"):
        get_dataset("cfd", tmp_path / "cfd", url=served.url("/cfd.zip"), progress=False)
    assert not (tmp_path / "cfd" / "images").exists()
    assert not (tmp_path / "cfd" / STAGING_DIR).exists()


def test_unexpected_cfd_labels_name_the_file(served, tmp_path):
    members = _cfd_members()
    members[f"{CFD_TOP}groundTruth/007.mat"] = _mat(np.full((H, W), 7, np.uint8))
    served.files["/cfd.zip"] = _zip(members)
    with pytest.raises(DataError, match=r"groundTruth/007\.mat: unexpected labels \[7\]"):
        get_dataset("cfd", tmp_path / "cfd", url=served.url("/cfd.zip"), progress=False)


def test_an_archive_of_another_layout_is_refused(served, tmp_path):
    served.files["/other.zip"] = _zip({"repo/images/001.jpg": _jpeg(0)})
    with pytest.raises(DataError, match=r"/other\.zip.*no folder in the archive holds "
                                        r"image/, groundTruth/"):
        get_dataset("cfd", tmp_path / "cfd", url=served.url("/other.zip"), progress=False)


# --------------------------------------------------------------------------- DeepCrack


def test_deepcrack_is_converted_into_split_folders(served, tmp_path):
    archive = _zip(_deepcrack_members())
    served.files["/DeepCrack.zip"] = archive
    out = tmp_path / "deepcrack"
    result = get_dataset("deepcrack", out, url=served.url("/DeepCrack.zip"), progress=False)

    assert result.counts == {"train": 3, "test": 2}
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == [
        "11125-1.jpg", "11125-2.jpg", "7Q3A9060-1.jpg"]
    for split in ("train", "test"):
        for path in (out / split / "masks").iterdir():
            assert path.suffix == ".png"
            mask = np.asarray(Image.open(path))
            assert set(np.unique(mask)) == {0, 255}
    # PNG labels keep their grey levels exactly, so the threshold is visible: > 127 is crack
    mask = np.asarray(Image.open(out / "train" / "masks" / "11125-1.png"))
    np.testing.assert_array_equal(mask[0, :8] == 255, GREYS > 127)
    assert (out / "test" / "masks" / "11290-3.png").is_file()  # from a JPEG label
    assert "yhlleo/DeepCrack" in (out / "README.md").read_text()
    src = FolderSource(out)
    assert [s.name for s in src.samples("test")] == ["11215-5", "11290-3"]


def test_a_deepcrack_image_without_label_is_named(served, tmp_path):
    members = _deepcrack_members()
    del members["test_lab/11215-5.png"]
    served.files["/DeepCrack.zip"] = _zip(members)
    with pytest.raises(DataError, match=r"test_\*: no mask for 11215-5"):
        get_dataset("deepcrack", tmp_path / "dc", url=served.url("/DeepCrack.zip"),
                    progress=False)


# --------------------------------------------------------------------------- checksum


def test_a_changed_download_is_refused_unless_forced(served, cfd_zip, tmp_path):
    served.files["/cfd.zip"] = cfd_zip
    out = tmp_path / "cfd"
    pinned = "0" * 64
    with pytest.raises(DataError) as error:
        get_dataset("cfd", out, url=served.url("/cfd.zip"), sha256=pinned, progress=False)
    message = str(error.value)
    assert "\n" not in message and served.url("/cfd.zip") in message
    assert f"SHA-256 {_sha(cfd_zip)}, expected {pinned}" in message and "--force" in message
    assert not (out / "images").exists() and not (out / DOWNLOAD_DIR).exists()

    lines: list[str] = []
    result = get_dataset("cfd", out, url=served.url("/cfd.zip"), sha256=pinned, force=True,
                         progress=False, log=lines.append)
    assert result.sha256 == _sha(cfd_zip) and (out / "masks" / "118.png").is_file()
    assert any(line.startswith("warning:") and pinned in line for line in lines)


def test_the_recorded_checksum_guards_a_later_download(served, cfd_zip, tmp_path):
    served.files["/cfd.zip"] = cfd_zip
    out = tmp_path / "cfd"
    get_dataset("cfd", out, url=served.url("/cfd.zip"), progress=False)
    assert recorded_sha256(out, served.url("/cfd.zip")) == _sha(cfd_zip)

    # complete: left alone, nothing fetched
    asked = len(served.requests)
    again = get_dataset("cfd", out, url=served.url("/cfd.zip"), progress=False)
    assert not again.downloaded and again.sha256 == _sha(cfd_zip)
    assert again.counts["test"] == 46 and len(served.requests) == asked

    # incomplete, and upstream changed: refused against the recorded SHA-256
    changed = _zip(_cfd_members(top="CrackForest-dataset-master/"))
    served.files["/cfd.zip"] = changed
    for path in (out / "masks").iterdir():
        path.unlink()
    (out / "masks").rmdir()
    with pytest.raises(DataError, match="the download changed"):
        get_dataset("cfd", out, url=served.url("/cfd.zip"), progress=False)
    result = get_dataset("cfd", out, url=served.url("/cfd.zip"), force=True, progress=False)
    assert result.sha256 == _sha(changed) == recorded_sha256(out, served.url("/cfd.zip"))
    assert len(list((out / "masks").iterdir())) == 118


# --------------------------------------------------------------------------- resume


def test_a_cut_connection_is_resumed_with_a_range_request(served, cfd_zip, tmp_path):
    served.files["/cfd.zip"] = cfd_zip
    served.cut_once.add("/cfd.zip")
    result = get_dataset("cfd", tmp_path / "cfd", url=served.url("/cfd.zip"), progress=False)
    assert result.sha256 == _sha(cfd_zip)
    assert served.requests == [("/cfd.zip", None), ("/cfd.zip", f"bytes={len(cfd_zip) // 2}-")]


def test_a_broken_download_keeps_its_part_for_the_next_run(served, tmp_path):
    body = bytes(range(256)) * 400
    served.files["/big.bin"] = body
    served.cut_once.add("/big.bin")
    dest = tmp_path / "big.bin"
    with pytest.raises(DataError, match=r"/big\.bin: the download broke off.*run the same "
                                        r"command again to resume"):
        download(served.url("/big.bin"), dest, progress=False, retries=0)
    assert part_path(dest).stat().st_size == len(body) // 2 and not dest.exists()

    assert download(served.url("/big.bin"), dest, progress=False) == dest
    assert dest.read_bytes() == body and not part_path(dest).exists()
    assert served.requests[-1] == ("/big.bin", f"bytes={len(body) // 2}-")


def test_a_server_without_range_support_is_downloaded_again(served, tmp_path):
    body = b"abcdefgh" * 5000
    served.files["/norange.bin"] = body
    served.cut_once.add("/norange.bin")
    served.ranges = False
    dest = download(served.url("/norange.bin"), tmp_path / "x.bin", progress=True, retries=1)
    assert dest.read_bytes() == body


def test_a_stale_part_longer_than_the_file_starts_over(served, tmp_path):
    served.files["/small.bin"] = b"0123456789"
    dest = tmp_path / "small.bin"
    part_path(dest).write_bytes(b"x" * 50)  # left by an older, longer version of the file
    download(served.url("/small.bin"), dest, progress=False)
    assert dest.read_bytes() == b"0123456789"


# --------------------------------------------------------------------------- errors


def test_a_404_is_one_line_naming_the_url(served, tmp_path):
    with pytest.raises(DataError, match=r"^http://127\.0\.0\.1:\d+/gone\.zip: HTTP 404 "
                                        r"Not Found$"):
        get_dataset("deepcrack", tmp_path / "dc", url=served.url("/gone.zip"), progress=False)


def test_a_file_that_is_not_a_zip_is_named(served, tmp_path):
    served.files["/cfd.zip"] = b"<html>rate limited</html>"
    with pytest.raises(DataError, match=r"/cfd\.zip \(CrackForest-dataset\.zip\): not a valid "
                                        r"zip archive"):
        get_dataset("cfd", tmp_path / "cfd", url=served.url("/cfd.zip"), progress=False)
    assert not (tmp_path / "cfd" / DOWNLOAD_DIR).exists()


def test_an_unreachable_host_is_a_data_error(served, tmp_path):
    with pytest.raises(DataError, match=r"127\.0\.0\.1:1/x\.zip: cannot download"):
        get_dataset("cfd", tmp_path / "cfd", url="http://127.0.0.1:1/x.zip", progress=False)


def test_declining_the_licence_downloads_nothing(served, cfd_zip, tmp_path):
    served.files["/cfd.zip"] = cfd_zip
    shown: list[str] = []

    def decline(text: str) -> bool:
        shown.append(text)
        return False

    with pytest.raises(FissureError, match="licence was not accepted"):
        get_dataset("cfd", tmp_path / "cfd", url=served.url("/cfd.zip"), confirm=decline,
                    progress=False)
    assert served.requests == [] and "licence: Made available for non-commercial" in shown[0]


def test_data_it_did_not_write_is_not_replaced(served, tmp_path):
    served.files["/DeepCrack.zip"] = _zip(_deepcrack_members())
    mine = tmp_path / "mine" / "train" / "images" / "keep.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my photo")
    with pytest.raises(DataError, match=r"mine: already holds train, not written by fissure"):
        get_dataset("deepcrack", tmp_path / "mine", url=served.url("/DeepCrack.zip"),
                    progress=False)
    assert served.requests == [] and mine.read_bytes() == b"my photo"
    get_dataset("deepcrack", tmp_path / "mine", url=served.url("/DeepCrack.zip"), force=True,
                progress=False)
    assert not mine.exists() and (tmp_path / "mine" / "train" / "masks").is_dir()


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'crack500'; known: cfd, deepcrack"):
        get_dataset("crack500", progress=False)


def test_catalogue_entries_are_pinned_and_licensed():
    for name, entry in CATALOGUE.items():
        assert entry.name == name and entry.url.startswith("https://github.com/")
        assert re.search(r"/[0-9a-f]{40}[/.]", entry.url), "pinned to a commit, not a branch"
        assert entry.licence and entry.citation and entry.layout
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)


def test_the_cli_asks_for_the_licence_and_writes_the_dataset(served, cfd_zip, tmp_path,
                                                             monkeypatch):
    from click.testing import CliRunner

    from fissure.cli import cli
    from fissure.data import public

    served.files["/cfd.zip"] = cfd_zip
    entry = replace(CATALOGUE["cfd"], url=served.url("/cfd.zip"))
    monkeypatch.setattr(public, "CATALOGUE", {**public.CATALOGUE, "cfd": entry})
    out = tmp_path / "cfd"
    refused = CliRunner().invoke(cli, ["data", "get", "cfd", "--out", str(out), "--quiet"])
    assert refused.exit_code != 0 and "pass --yes" in refused.output
    assert "non-commercial research" in refused.output and not (out / "images").exists()
    done = CliRunner().invoke(cli, ["data", "get", "cfd", "--out", str(out), "--yes", "--quiet"])
    assert done.exit_code == 0, done.output
    assert "train 64, val 7, test 46" in done.output and (out / "README.md").is_file()
    unknown = CliRunner().invoke(cli, ["data", "get", "nope", "--yes"])
    assert unknown.exit_code != 0 and "cfd" in unknown.output and "Traceback" not in (
        unknown.output)
