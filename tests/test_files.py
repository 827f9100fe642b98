"""The one writer: whole files replaced atomically and fsynced, logs appended line by line."""

import json
import os

import pandas as pd
import pytest

from mechgrok import files


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "table.csv"
    files.write_csv(target, pd.DataFrame({"a": [1, 2]}))

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(target, boom)
    assert pd.read_csv(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_every_whole_file_write_is_fsynced_before_it_replaces_the_target(tmp_path, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(len(synced)), real_replace(a, b)))
    files.write_json(tmp_path / "x.json", {"a": 1})
    assert synced and replaced == [1], "fsync must come before the rename"


def test_a_write_replaces_a_symlink_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "progress.csv").symlink_to(victim)
    files.write_text(tmp_path / "progress.csv", "new")
    assert victim.read_text() == "keep me"
    assert (tmp_path / "progress.csv").read_text() == "new" and not (tmp_path / "progress.csv").is_symlink()


def test_a_torn_log_line_is_skipped_with_a_warning_and_does_not_swallow_the_next_record(tmp_path):
    log = tmp_path / "finished.jsonl"
    files.append_jsonl(log, [{"id": "a"}])
    with open(log, "a") as f:
        f.write('{"id": "b", "sec')  # a crash mid-line
    files.append_jsonl(log, [{"id": "c"}])
    with pytest.warns(UserWarning, match="finished.jsonl: line 2"):
        assert [r["id"] for r in files.read_jsonl(log)] == ["a", "c"]
    assert json.loads(log.read_text().splitlines()[-1]) == {"id": "c"}
