"""Tests for fissure.snowflake.runs: stage checkpoints, pushing runs and predictions, pulling,
and stage images as prediction inputs, each on an explicit session."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
import torch
from stage_helpers import STAGE, CountingGets, CountingPuts, pair, png

from fissure.checkpoint import Checkpoint
from fissure.config import load_config
from fissure.errors import CheckpointError, ConfigError, DataError
from fissure.model import build_model
from fissure.prediction.inputs import find_inputs
from fissure.snowflake import runs, transfer
from fissure.snowflake.files import SessionGone
from fissure.snowflake.runs import (
    PUSH_FILES,
    check_push_target,
    pull,
    push_outputs,
    push_run,
    read_checkpoint,
    stage_fetcher,
)
from fissure.snowflake.transfer import fetch_file, push_files

MODELS = f"{STAGE}/models/runs-test"


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 checkpoint with threshold 0.4, as training writes it."""
    torch.manual_seed(0)
    cfg = load_config(None, ["model.encoder=resnet18", "data.size=64"])
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    Checkpoint.create(build_model("resnet18"), cfg, epoch=3, threshold=0.4).save(path)
    return path


def _same_weights(a: Checkpoint, b: Checkpoint) -> bool:
    return a.state_dict.keys() == b.state_dict.keys() and all(
        torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict
    )


def test_read_checkpoint_from_a_file_needs_no_session(checkpoint_file) -> None:
    ckpt = read_checkpoint(checkpoint_file)
    assert ckpt.encoder == "resnet18" and ckpt.threshold == 0.4 and ckpt.epoch == 3
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(checkpoint_file.parent / "absent.pt")


def test_read_checkpoint_from_the_stage_plain_and_gzip(session, checkpoint_file, tmp_path):
    packed = tmp_path / "best_model.pth.gz"
    packed.write_bytes(gzip.compress(checkpoint_file.read_bytes()))
    push_files(session, [checkpoint_file, packed], MODELS)
    local = read_checkpoint(checkpoint_file)
    for name in ("best.pt", "best_model.pth.gz"):
        ckpt = read_checkpoint(f"{MODELS}/{name}", session)
        assert ckpt.threshold == 0.4 and _same_weights(ckpt, local), name
    with pytest.raises(ConfigError, match="best.pt: a stage checkpoint needs a Snowflake session"):
        read_checkpoint(f"{MODELS}/best.pt")
    with pytest.raises(DataError, match="absent.pt: file not found in the stage"):
        read_checkpoint(f"{MODELS}/absent.pt", session)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    push_files(session, [junk], MODELS)
    with pytest.raises(CheckpointError, match=rf"^{MODELS}/junk\.pt: not a readable"):
        read_checkpoint(f"{MODELS}/junk.pt", session)  # names the stage file, not a temp copy


def test_check_push_target() -> None:
    assert check_push_target(f"{STAGE}/models/run1/") == f"{STAGE}/models/run1/"
    with pytest.raises(DataError, match="'models/run1/': not a stage path"):
        check_push_target("models/run1/")
    with pytest.raises(DataError, match="'..'"):
        check_push_target(f"{STAGE}/../x/")


def test_push_run_and_pull(session, checkpoint_file, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.pt").write_bytes(checkpoint_file.read_bytes())
    (run_dir / "config.yaml").write_text("data:\n  source: stage\n")
    (run_dir / "history.csv").write_text("epoch\n1\n")
    (run_dir / "last.pt").write_bytes(b"never pushed")
    lines: list[str] = []
    pushed = push_run(session, run_dir, f"{STAGE}/models/pushed/", log=lines.append)
    names = ["best.pt", "config.yaml", "history.csv"]
    assert pushed == [f"{STAGE}/models/pushed/{n}" for n in names]
    assert set(names) <= set(PUSH_FILES) and "last.pt" not in PUSH_FILES
    assert lines == [f"pushed {', '.join(names)} to {STAGE}/models/pushed/"]
    got = pull(session, f"{STAGE}/models/pushed/config.yaml", tmp_path / "pulled")
    assert got == tmp_path / "pulled" / "config.yaml"
    assert got.read_text() == (run_dir / "config.yaml").read_text()

    with pytest.raises(CheckpointError, match="no best.pt to push"):
        push_run(session, tmp_path, f"{STAGE}/models/x/")
    with pytest.raises(DataError, match="not a stage path"):
        push_run(session, run_dir, "models/x/")
    monkeypatch.setattr(runs, "is_main_process", lambda: False)
    assert push_run(session, run_dir, f"{STAGE}/models/x/") == []  # rank 0 uploads, not others


def test_push_outputs_rewrites_paths_to_the_stage(session, tmp_path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(pair(1)[1]))
    (folder / "sub").mkdir()  # only the folder's own files go up
    record = {"image": "photos/a.png", "mask": f"{folder}/a.png", "crack_pixels": 7}
    (folder / "predictions.json").write_text(json.dumps([record]))
    with (folder / "predictions.csv").open("w", newline="") as f:
        csv.writer(f).writerows([list(record), list(record.values())])
    prefix = f"{STAGE}/predictions/p1/"
    records = push_outputs(session, folder, prefix, [record])
    assert records == [{**record, "mask": f"{prefix}a.png"}]
    pulled = tmp_path / "pulled"
    listing = json.loads(pull(session, f"{prefix}predictions.json", pulled).read_text())
    assert listing == records
    rows = list(csv.reader(pull(session, f"{prefix}predictions.csv", pulled).open()))
    assert rows[1][1] == f"{prefix}a.png"
    assert pull(session, f"{prefix}a.png", pulled).read_bytes() == (folder / "a.png").read_bytes()
    with pytest.raises(DataError, match="not a stage path"):
        push_outputs(session, folder, "predictions/")


def test_stage_fetcher_reads_named_images_on_demand(session, tmp_path) -> None:
    raw = png(pair(2)[0])
    image = tmp_path / "b.png.gz"
    image.write_bytes(gzip.compress(raw, mtime=0))
    push_files(session, [image], f"{STAGE}/photos")
    fetch = stage_fetcher(session)
    found = find_inputs([f"{STAGE}/photos/b.png.gz"], fetch=fetch)
    assert [i.source for i in found] == [f"{STAGE}/photos/b.png.gz"]
    assert found[0].read() == raw  # gunzipped on the way, as a model pulled is
    assert str(found[0].location) == f"{STAGE[1:]}/photos/b.png.gz"
    with pytest.raises(DataError) as info:  # the emulator has no LIST
        fetch(f"{STAGE}/photos/", "**/*")
    assert "cannot be listed in Snowpark's local emulator" in str(info.value)
    missing = fetch(f"{STAGE}/photos/absent.png", "**/*")  # read on demand: fails when read
    with pytest.raises(DataError, match="absent.png: file not found in the stage"):
        missing[0].read()
    assert fetch_file(session, f"{STAGE}/photos/b.png.gz", tmp_path / "x").name == "b.png"


def test_predict_a_stage_folder_on_a_real_account(session, tmp_path, monkeypatch) -> None:
    from snowflake.snowpark import ListResult

    folder = f"{STAGE}/site7/"
    local = tmp_path / "site7"
    (local / "sub").mkdir(parents=True)
    files = {"a.jpg": png(pair(3)[0]), "b.png.gz": gzip.compress(png(pair(4)[0]), mtime=0)}
    for name, data in files.items():
        (local / name).write_bytes(data)
    (local / "notes.txt").write_text("not an image")
    (local / "sub" / "a.jpg").write_bytes(png(pair(5)[0]))  # same base name, in a sub-folder
    push_files(session, [local / n for n in (*files, "notes.txt")], folder)
    push_files(session, [local / "sub" / "a.jpg"], folder + "sub")
    rows = [  # LIST on a real account: '<stage in lower case>/<path>' (sql-reference/sql/list)
        ListResult(f"my_fissure_stage/site7/{rel}", (local / rel).stat().st_size, "", None, "")
        for rel in ("a.jpg", "b.png.gz", "notes.txt", "sub/a.jpg")
    ]
    monkeypatch.setattr(transfer, "is_local_testing", lambda s: False)
    monkeypatch.setattr(session.file, "list", lambda location, **kw: rows)  # LIST only
    found = find_inputs([folder], fetch=stage_fetcher(session))
    names = ["a.jpg", "b.png.gz", "sub/a.jpg"]  # images only, in sub-folders too
    assert [i.source for i in found] == [folder + name for name in names]
    gets = CountingGets(session, monkeypatch)
    assert found[1].read() == files["b.png.gz"]  # as stored: the decoder reads gzip
    assert found[0].read() == files["a.jpg"] and found[2].read() == png(pair(5)[0])
    # One GET brought the folder; the two a.jpg share a name once flattened: one GET each.
    assert gets.calls == [folder, f"{folder}a.jpg", f"{folder}sub/a.jpg"]
    top = find_inputs([folder], pattern="*.jpg", fetch=stage_fetcher(session))
    assert [i.source for i in top] == [f"{folder}a.jpg"]


def test_push_run_keeps_the_session_it_was_given(session, checkpoint_file, tmp_path) -> None:
    from snowflake.snowpark import Session

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.pt").write_bytes(checkpoint_file.read_bytes())
    other = Session.builder.config("local_testing", True).create()
    try:  # two sessions: "the" active session no longer exists, and is never looked for
        pushed = push_run(other, run_dir, f"{STAGE}/models/kept/", log=lambda line: None)
        assert pushed == [f"{STAGE}/models/kept/best.pt"]
        assert pull(other, pushed[0], tmp_path / "back").read_bytes() == (
            run_dir / "best.pt"
        ).read_bytes()
        with pytest.raises(DataError, match="file not found in the stage"):
            pull(session, pushed[0], tmp_path / "not-there")  # another session's stage
    finally:
        other.close()


def test_push_after_a_long_run_reconnects(session, checkpoint_file, tmp_path, monkeypatch):
    from snowflake.snowpark import Session

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.pt").write_bytes(checkpoint_file.read_bytes())
    gone = Session.builder.config("local_testing", True).create()
    gone.close()  # what Snowflake does to a session idle for 4 hours without keep-alive
    with pytest.raises(SessionGone, match="session has expired or closed"):
        push_run(gone, run_dir, f"{STAGE}/models/late/", log=lambda line: None)
    lines: list[str] = []
    pushed = push_run(gone, run_dir, f"{STAGE}/models/late/", log=lines.append,
                      reopen=lambda: session)
    assert pull(session, pushed[0], tmp_path / "back").name == "best.pt"
    assert lines[0] == "the Snowflake session has closed; opening a new one"

    # Closed on the server while the client still thinks it open: the PUT says so
    # (connector network.py: 390114 "Authentication token has expired").
    from snowflake.connector.errors import ProgrammingError

    def expired(*args, **kwargs):
        raise ProgrammingError(msg="Authentication token has expired.", errno=390114)

    stale = Session.builder.config("local_testing", True).create()
    try:
        monkeypatch.setattr(stale.file, "put", expired)
        lines.clear()
        push_run(stale, run_dir, f"{STAGE}/models/later/", log=lines.append,
                 reopen=lambda: session)
        assert lines[0] == "the Snowflake session has expired; opening a new one"
        assert pull(session, f"{STAGE}/models/later/best.pt", tmp_path / "b2").is_file()
    finally:
        stale.close()


def test_outputs_go_up_in_one_put(session, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(png(pair(i)[1]))
    puts = CountingPuts(session, monkeypatch)
    push_outputs(session, folder, f"{STAGE}/predictions/many/")
    assert len(puts.puts) == 1 and not puts.streams
