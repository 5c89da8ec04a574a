from pathlib import Path

import pytest

from fissure.writes import replacing


def test_a_finished_block_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.onnx"
    with replacing(target, suffix=".tmp.onnx", durable=True) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp.onnx")
        assert not target.exists()  # nothing visible under the final name while writing
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]


def test_a_failed_block_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "best.pt"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="check failed"), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("check failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_a_machine_error_names_the_target_not_the_temporary(tmp_path: Path) -> None:
    """A failed rename (the hidden temporary named) is reported on the file the user asked
    for, as the same kind of OSError; one that names no file is left as it is."""
    import errno

    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as info, replacing(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename is None and info.value.errno == errno.ENOSPC
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError) as info, replacing(tmp_path / "taken") as tmp:
        tmp.write_text("x")
    assert info.value.filename == str(tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_interrupt_cleans_up_too(tmp_path: Path) -> None:
    target = tmp_path / "manifest.csv"
    with pytest.raises(KeyboardInterrupt), replacing(target) as tmp:
        tmp.write_bytes(b"a,b")
        raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())


def test_two_writers_of_one_target_never_share_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "index.jsonl"
    with replacing(target) as first, replacing(target) as second:
        assert first != second
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert target.read_bytes() == b"1"  # the outer block finishes last


def test_the_file_gets_the_mode_of_any_file_the_user_writes(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    with replacing(tmp_path / "entry.u8") as tmp:
        tmp.write_bytes(b"x")
    assert (tmp_path / "entry.u8").stat().st_mode == plain.stat().st_mode
