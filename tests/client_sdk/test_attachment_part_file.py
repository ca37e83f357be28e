"""The download's part file and its final name (review of issue 15, finding 6): a part planted as a
symbolic link or a hard link is refused (nothing is written or chmod-ed through it), and a
directory destination never replaces a file already there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from saltline.client_sdk.errors import UsageError
from saltline.client_sdk.facets.attachment_files import _open_part, _reserve_free_name


def test_a_planted_symlink_part_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.chmod(victim, 0o644)
    part = tmp_path / "photo.jpg.saltline-part"
    part.symlink_to(victim)
    with pytest.raises(UsageError):
        _open_part(part)
    assert victim.read_bytes() == b"precious" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    dangling = tmp_path / "new.bin.saltline-part"
    dangling.symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(UsageError):
        _open_part(dangling)
    assert not (tmp_path / "created-through-the-link").exists()


def test_a_hard_linked_part_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    part = tmp_path / "x.saltline-part"
    os.link(victim, part)
    with pytest.raises(UsageError, match="plain file"):
        _open_part(part)
    assert victim.read_bytes() == b"precious"


def test_a_part_of_ours_is_resumed_and_made_private(tmp_path: Path) -> None:
    part = tmp_path / "x.saltline-part"
    part.write_bytes(b"abc")
    os.chmod(part, 0o644)
    with _open_part(part) as f:
        assert f.read() == b"abc"
        f.write(b"def")
    assert part.read_bytes() == b"abcdef" and stat.S_IMODE(part.stat().st_mode) == 0o600


def test_a_free_name_is_taken_beside_existing_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("mine")
    first = _reserve_free_name(tmp_path / "a.txt")
    second = _reserve_free_name(tmp_path / "a.txt")
    assert (first.name, second.name) == ("a (1).txt", "a (2).txt")
    assert (tmp_path / "a.txt").read_text() == "mine"
    (tmp_path / "b.txt").symlink_to(tmp_path / "elsewhere")  # a dangling link is taken as existing
    assert _reserve_free_name(tmp_path / "b.txt").name == "b (1).txt"
    assert not (tmp_path / "elsewhere").exists()
    assert _reserve_free_name(tmp_path / "new").name == "new"
