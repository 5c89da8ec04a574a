"""Stage reading: the notebook's per-epoch stage reads against fissure's local cache.

Generates N synthetic pairs (gzip PNGs of SIZE px, as the notebook's data), uploads them
to a Snowpark local-testing stage under the notebook's names, then times:

- pass 1: a new StageSource filling its cache from the stage, then decoding every pair;
- pass 2: another new source (a second run) finding the cache complete, then decoding;
- pass 3: the same source again (the next epoch): read cached files and decode;
- per pair, the notebook's way (``SnowflakeFile.open`` = ``get_stream``, gunzip, PIL
  decode: paid again in every epoch), a fresh collision-safe ``session.file.get`` into a
  private temporary folder, the cache path (read the cached file, decode), and decoding
  alone from memory.

With ``--fill-only`` it measures the cache fill alone, both ways: one GET per file, and
one GET per folder (``images/``, ``masks/``) with ``parallel=`` threads, counting the GET
queries each issues (``session.file.get`` is wrapped).

The emulator's stage is a local folder, so every stage read here is far cheaper than a
real one (no network round trip): the gaps measured are lower bounds.

    .venv/bin/python scripts/bench_stage.py --count 500
    .venv/bin/python scripts/bench_stage.py --fill-only --count 2000 --size 128
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from benchkit.common import cpu_model
from PIL import Image

from fissure.config import SnowflakeConfig
from fissure.data import load_pair
from fissure.data.image import decode_image, decode_mask
from fissure.data.synth import generate_dataset
from fissure.snowflake.cache import FillOptions
from fissure.snowflake.source import StageSource
from fissure.snowflake.upload import upload_dataset


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best of ``repeat`` runs: the machine is shared, and noise only ever adds time."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def notebook_read(path: str, mode: str) -> np.ndarray:
    """The notebook's reader: SnowflakeFile (get_stream on a client), gunzip, PIL."""
    from snowflake.snowpark.files import SnowflakeFile

    with (
        SnowflakeFile.open(path, "rb", require_scoped_url=False) as f,
        gzip.GzipFile(fileobj=f) as gz,
    ):
        return np.asarray(Image.open(gz).convert(mode))


def fresh_get_read(session, path: str, mode: str) -> np.ndarray:
    """A fresh, collision-safe stage read: GET into a private temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bench-get-") as tmp:
        session.file.get(path, tmp)
        data = (Path(tmp) / path.rsplit("/", 1)[-1]).read_bytes()
    return np.asarray(Image.open(io.BytesIO(gzip.decompress(data))).convert(mode))


class GetCounter:
    """Counts the GET queries a fill issues (``session.file.get`` wrapped)."""

    def __init__(self, session) -> None:
        self.real = session.file.get
        self.calls = 0
        session.file.get = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def fill_rows(session, cfg: SnowflakeConfig, work: Path, repeat: int) -> list[tuple]:
    """(way, GET queries, seconds, files) of a cache fill by file and by prefix, each into
    a new empty cache, best of ``repeat``."""
    ways = {"one GET per file": FillOptions(progress=False, prefix_min=10**9),
            "one GET per folder (prefix, parallel=8)": FillOptions(progress=False)}
    counter = GetCounter(session)
    rows = []
    for way, options in ways.items():
        best, calls, files = float("inf"), 0, 0
        for attempt in range(repeat):
            here = SnowflakeConfig(cache_dir=str(work / f"cache-{len(rows)}-{attempt}"))
            source = StageSource(session, here, reader="cache", fill=options)
            counter.calls = 0
            start = time.perf_counter()
            pairs = source.samples("all")
            best = min(best, time.perf_counter() - start)
            calls, files = counter.calls, 2 * len(pairs)
        rows.append((way, calls, best, files))
    return rows


def print_fill(rows: list[tuple], args: argparse.Namespace, t_gen: float, t_up: float) -> None:
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"Command: `{command}`  ")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          "Snowpark local-testing stage (no network)  ")
    print(f"Data: {args.count} pairs of {args.size}x{args.size} px, gzip PNG (synthetic), "
          f"generated in {t_gen:.1f} s, uploaded in {t_up:.1f} s; fill: best of {args.repeat} "
          "into an empty cache\n")
    print("| cache fill | GET queries | files | wall s | ms per file |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for way, calls, seconds, files in rows:
        print(f"| {way} | {calls} | {files} | {seconds:.2f} | {1000 * seconds / files:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="image/mask pairs")
    parser.add_argument("--size", type=int, default=448, help="image side in px")
    parser.add_argument("--repeat", type=int, default=2, help="best of R for steady states")
    parser.add_argument("--workdir", help="folder for data and cache (default: a temp folder)")
    parser.add_argument("--fill-only", action="store_true",
                        help="measure the cache fill only: per file against by prefix")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from snowflake.snowpark import Session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-stage-"))
    data = work / "data"
    t_gen = timed(lambda: generate_dataset(data, count=args.count, size=args.size, seed=0))
    session = Session.builder.config("local_testing", True).create()
    cfg = SnowflakeConfig(cache_dir=str(work / "cache"))
    t_up = timed(lambda: upload_dataset(session, data, cfg, progress=False))
    if args.fill_only:
        print_fill(fill_rows(session, cfg, work, args.repeat), args, t_gen, t_up)
        session.close()
        return

    def decode_all(source: StageSource) -> None:
        for sample in source.samples("all"):
            load_pair(source, sample)

    def new_source() -> StageSource:
        return StageSource(session, cfg, reader="cache", fill=FillOptions(progress=False))

    first = new_source()
    t1 = timed(lambda: decode_all(first))
    t2 = timed(lambda: decode_all(new_source()))
    t3 = timed(lambda: decode_all(first), args.repeat)
    samples = first.samples("all")
    n = len(samples)

    def notebook_epoch() -> None:
        for s in samples:
            notebook_read(s.image, "RGB")
            notebook_read(s.mask, "L")

    def fresh_epoch() -> None:
        for s in samples:
            fresh_get_read(session, s.image, "RGB")
            fresh_get_read(session, s.mask, "L")

    blobs = [(first.read(s.image), first.read(s.mask), s) for s in samples]

    def decode_only() -> None:
        for image, mask, s in blobs:
            decode_image(image, s.image)
            decode_mask(mask, s.mask)

    t_nb = timed(notebook_epoch, args.repeat)
    t_fresh = timed(fresh_epoch, args.repeat)
    t_decode = timed(decode_only, args.repeat)
    session.close()

    def row(label: str, seconds: float) -> str:
        return f"| {label} | {seconds:.2f} | {1000 * seconds / n:.2f} |"

    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"Command: `{command}`  ")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}; Snowpark local-testing stage (no network)  "
    )
    print(
        f"Data: {n} pairs of {args.size}x{args.size} px, gzip PNG (synthetic); pass 3 and the rows "
        f"below it: best of {args.repeat} runs\n"
    )
    print("| step | total s | ms per pair |")
    print("| --- | ---: | ---: |")
    print(row("generate dataset (local files)", t_gen))
    print(row("upload to stage + manifest (`upload_dataset`)", t_up))
    print(row("pass 1: new source, cache fill + decode", t1))
    print(row("pass 2: new source (next run), cache complete + decode", t2))
    print(row("pass 3: same source (next epoch), cached read + decode", t3))
    print(row("notebook way, every epoch: `SnowflakeFile` + gunzip + decode", t_nb))
    print(row("fresh private-temp-dir `get` + gunzip + decode, every epoch", t_fresh))
    print(row("decode only (bytes already in memory)", t_decode))


if __name__ == "__main__":
    main()
