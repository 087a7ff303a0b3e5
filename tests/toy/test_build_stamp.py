import json
import os

import pytest

from verl.toy.build_stamp import BUILD_STAMP, UnstampedFolderError, needs_build, stamp_mismatch, write_build_stamp

STAMP = {"builder": "make_tiny_model", "seed": 0, "spec": {"rope_theta": 10000.0, "mrope_section": (2, 2, 28)}}


def test_a_stamped_build_of_the_same_arguments_is_kept(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    write_build_stamp(str(tmp_path), STAMP)
    assert stamp_mismatch(str(tmp_path), STAMP) is None  # tuples compare equal after the JSON round trip
    assert not needs_build(str(tmp_path), STAMP)


def test_a_stamped_build_of_other_arguments_is_rebuilt_and_the_change_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    write_build_stamp(str(tmp_path), {**STAMP, "spec": {"rope_theta": 10.0, "mrope_section": (8, 12, 12)}})
    reason = stamp_mismatch(str(tmp_path), STAMP)
    assert "spec: {'mrope_section': [8, 12, 12], 'rope_theta': 10.0} -> " in reason
    assert needs_build(str(tmp_path), STAMP)
    assert "rebuilding" in capsys.readouterr().out
    # The old stamp is gone before the rebuild starts: a rebuild that dies is not taken for complete.
    assert not os.path.exists(tmp_path / BUILD_STAMP)


def test_absent_or_empty_folders_are_built_and_unstamped_files_refused(tmp_path):
    assert needs_build(str(tmp_path / "absent"), STAMP)
    assert needs_build(str(tmp_path), STAMP)
    (tmp_path / "model.safetensors").write_bytes(b"someone's weights")
    with pytest.raises(UnstampedFolderError, match=f"{tmp_path} has no {BUILD_STAMP}.*remove it"):
        needs_build(str(tmp_path), STAMP)
    assert (tmp_path / "model.safetensors").read_bytes() == b"someone's weights"


def test_the_stamp_is_readable_json(tmp_path):
    write_build_stamp(str(tmp_path), STAMP)
    assert json.loads((tmp_path / BUILD_STAMP).read_text())["spec"]["mrope_section"] == [2, 2, 28]
    assert not os.path.exists(tmp_path / (BUILD_STAMP + ".tmp"))
