"""Tests for fissure.snowflake.files: names, retries, single-file push and fetch."""

from __future__ import annotations

import gzip
import io
import os

import pytest
import torch
from stage_helpers import STAGE

from fissure.config import SnowflakeConfig
from fissure.errors import ConfigError, DataError
from fissure.snowflake.files import (
    fetch_file,
    is_transient,
    listed,
    push_files,
    qualified,
    stage_name,
    stage_rel,
    validate_stage_name,
    with_retries,
)


def test_retries_only_transient_errors_with_backoff() -> None:
    from snowflake.connector.errors import OperationalError

    calls = []

    def fails(*args, **kwargs):
        calls.append(1)
        raise OperationalError("network is unreachable")

    delays: list[float] = []
    assert with_retries(lambda: 7, "x") == 7
    with pytest.raises(DataError, match=r"^@X/f: failed after 4 tries"):
        with_retries(fails, "@X/f", sleep=delays.append)
    assert delays == [0.5, 1.0, 2.0] and len(calls) == 4
    with pytest.raises(ValueError):  # not transient: no retry
        with_retries(lambda: (_ for _ in ()).throw(ValueError("bad")), "x", sleep=delays.append)
    assert not is_transient(DataError("x")) and not is_transient(FileNotFoundError("x"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())


def test_push_and_fetch_model_files(session, tmp_path) -> None:
    weights = os.urandom(3000)
    plain = tmp_path / "best_model.pth"
    plain.write_bytes(weights)
    packed = tmp_path / "gz" / "best_model.pth.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(weights))
    prefix = f"{STAGE}/models"
    assert push_files(session, [plain], prefix + "/") == [f"{prefix}/best_model.pth"]
    assert push_files(session, [packed], prefix) == [f"{prefix}/best_model.pth.gz"]

    got = fetch_file(session, f"{prefix}/best_model.pth", tmp_path / "a")
    assert got == tmp_path / "a" / "best_model.pth" and got.read_bytes() == weights
    got = fetch_file(session, f"{prefix}/best_model.pth.gz", tmp_path / "b")
    assert got == tmp_path / "b" / "best_model.pth" and got.read_bytes() == weights
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["best_model.pth"]

    torch.save({"w": torch.arange(3)}, tmp_path / "ckpt.pt")
    push_files(session, [tmp_path / "ckpt.pt"], prefix)
    state = torch.load(fetch_file(session, f"{prefix}/ckpt.pt", tmp_path / "c"), weights_only=True)
    assert state["w"].tolist() == [0, 1, 2]

    with pytest.raises(DataError, match=rf"^{prefix}/absent\.pth: file not found in the stage"):
        fetch_file(session, f"{prefix}/absent.pth", tmp_path / "d")
    session.file.put_stream(
        io.BytesIO(b"\x1f\x8bjunk"), f"{prefix}/broken.pth.gz", auto_compress=False, overwrite=True
    )
    with pytest.raises(DataError, match="broken.pth.gz: corrupt or truncated gzip"):
        fetch_file(session, f"{prefix}/broken.pth.gz", tmp_path / "e")
    with pytest.raises(DataError, match="not a stage path"):
        push_files(session, [plain], "models/")
    with pytest.raises(DataError, match="file not found"):
        push_files(session, [tmp_path / "nothing.pth"], prefix)


def test_stage_names() -> None:
    assert validate_stage_name("@DB.S.STAGE/models/a..b.pth") == "@DB.S.STAGE/models/a..b.pth"
    assert validate_stage_name("images/001.png.gz") == "images/001.png.gz"
    for bad, why in [
        ("@S/../x", "'..'"),
        ("/abs/x", "absolute"),
        ("C:/x", "absolute"),
        ("a\\b", "backslash"),
        ("a\x00b", "control"),
        ("a/\x7f", "control"),
        ("@S", "empty"),
        ("a//b", "empty or '.'"),
        (" a", "leading"),
    ]:
        with pytest.raises(DataError, match=why):
            validate_stage_name(bad)
    assert stage_name(SnowflakeConfig()) == STAGE
    assert stage_name(SnowflakeConfig(stage="@OTHER.SCH.ST/")) == "@OTHER.SCH.ST"
    with pytest.raises(ConfigError, match="data.snowflake.stage"):
        stage_name(SnowflakeConfig(stage="MY STAGE; DROP"))


def test_qualified_names_and_stage_relative_paths() -> None:
    cfg = SnowflakeConfig()
    assert qualified(cfg, "V_X") == "PROJET_FISSURES.STORAGE_SCHEMA.V_X"
    assert qualified(cfg, " OTHER.SCH.T ") == "OTHER.SCH.T"
    with pytest.raises(ConfigError, match="not a valid table or view name"):
        qualified(cfg, "T; DROP TABLE X")
    assert stage_rel("/images/", "001.png", ".gz") == "images/001.png.gz"
    assert stage_rel("", "001.png", "") == "001.png"


def test_listed_names_ten_then_a_count() -> None:
    assert listed(["a", "b"]) == "a, b"
    assert listed(map(str, range(12))) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"
