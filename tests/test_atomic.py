"""Atomic writes: a failed write leaves the old output as it was and no temporary behind."""

import json

import pytest

from gptailor_merge.core.atomic import atomic_folder, atomic_path, write_json_atomic


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_json_atomic(tmp_path / "summary.json", {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}


def test_a_failed_folder_build_keeps_the_old_folder_and_a_finished_one_replaces_it(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "half.safetensors").write_text("x")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    with atomic_folder(out) as tmp:
        (tmp / "weights.safetensors").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
