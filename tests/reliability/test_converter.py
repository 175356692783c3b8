"""tools/convert_checkpoint.py never loses data: inputs are validated before anything is removed,
outputs are swapped in only when complete, and a damaged shard is named (not blamed on flags)."""

import os

import pytest

from megatron_fp4.tools import convert_checkpoint as convert

from .test_resume import SHORT, snapshot
from training.test_pretrain import run

pytest.importorskip("safetensors")
MODEL = f"{SHORT} --fp4"


@pytest.fixture()
def checkpoint(corpus, tmp_path):
    run(corpus, f"--train-iters 3 {MODEL} --save {tmp_path / 'ck'}")
    return tmp_path / "ck"


def test_output_equal_to_or_inside_the_checkpoint_is_refused(checkpoint):
    before = snapshot(checkpoint)
    for output in (checkpoint, checkpoint / "hf", checkpoint.parent):
        with pytest.raises(SystemExit, match=r"--output .* and --load .* overlap"):
            convert.main(["export", "--load", str(checkpoint), "--output", str(output), "--force"])
    assert snapshot(checkpoint) == before


def test_a_bad_load_with_force_leaves_the_existing_output(checkpoint, tmp_path):
    convert.main(["export", "--load", str(checkpoint), "--output", str(tmp_path / "hf")])
    before = snapshot(tmp_path / "hf")
    with pytest.raises(SystemExit, match="no finished checkpoint"):
        convert.main(["export", "--load", str(tmp_path / "typo"), "--output", str(tmp_path / "hf"), "--force"])
    assert snapshot(tmp_path / "hf") == before


def test_a_failure_while_writing_leaves_the_existing_output(checkpoint, tmp_path, monkeypatch):
    convert.main(["export", "--load", str(checkpoint), "--output", str(tmp_path / "hf")])
    before = snapshot(tmp_path / "hf")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert.main(["export", "--load", str(checkpoint), "--output", str(tmp_path / "hf"), "--force"])
    assert snapshot(tmp_path / "hf") == before
    assert sorted(os.listdir(tmp_path)) == ["ck", "hf"]  # no staging directory left behind
    monkeypatch.undo()
    convert.main(["export", "--load", str(checkpoint), "--output", str(tmp_path / "hf"), "--force"])  # replaced when complete
    assert (tmp_path / "hf" / "config.json").exists()


def test_import_without_weights_leaves_the_existing_checkpoint(corpus, checkpoint, tmp_path):
    convert.main(["export", "--load", str(checkpoint), "--output", str(tmp_path / "hf")])
    os.remove(tmp_path / "hf" / "model.safetensors")
    before = snapshot(checkpoint)
    with pytest.raises(SystemExit, match="no model.safetensors"):
        convert.main(["import", "--hf", str(tmp_path / "hf"), "--save", str(checkpoint), "--tokenizer-model", corpus[1], "--force"])
    assert snapshot(checkpoint) == before


def test_a_truncated_shard_is_named_not_blamed_on_the_flags(checkpoint, tmp_path):
    shard = sorted((checkpoint / "iter_0000003").glob("*.distcp"))[0]
    os.truncate(shard, os.path.getsize(shard) // 2)
    with pytest.raises(SystemExit, match=rf"{shard.name}: truncated: the checkpoint's metadata needs \d+ bytes, the file has \d+") as raised:
        convert.main(["export", "--load", str(checkpoint), "--output", str(tmp_path / "hf")])
    assert "model flags" not in str(raised.value)


def test_the_trainer_names_a_damaged_checkpoint(corpus, checkpoint):
    os.remove(checkpoint / "iter_0000003" / "common.pt")
    with pytest.raises(SystemExit, match=r"iter_0000003: common.pt is missing"):
        run(corpus, f"--train-iters 3 {MODEL} --load {checkpoint}")


def test_export_still_works_after_a_failed_start(corpus, checkpoint, tmp_path):
    with pytest.raises(SystemExit):
        run(corpus, f"--train-iters 3 {MODEL} --load {checkpoint} --save {checkpoint} --data-path typo")
    convert.main(["export", "--load", str(checkpoint), "--output", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "model.safetensors").exists()
