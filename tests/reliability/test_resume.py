"""What a resume checks: the tracker, --save holding other checkpoints, the model, the tokenizer,
the schedule, --train-iters; and args.json travelling with each checkpoint."""

import json
import os
import shutil

import pytest

from megatron_fp4.training import checkpointing

from megatron_fp4 import pretrain_gpt
from training.test_pretrain import argv, run

SHORT = "--hidden-dropout 0 --attention-dropout 0"


def snapshot(directory) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: a checkpoint compared before and after."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, directory)] = open(path, "rb").read()
    return files


def refused_leaving_untouched(corpus, directory, pattern: str, flags: str) -> None:
    """The run fails with ``pattern`` and not one byte under ``directory`` changed."""
    before = snapshot(directory)
    with pytest.raises(SystemExit, match=pattern):
        run(corpus, flags)
    assert snapshot(directory) == before


@pytest.fixture()
def trained(corpus, tmp_path):
    """A checkpoint directory with iterations 2 and 4 (schedule of --train-iters 4)."""
    run(corpus, f"--train-iters 4 --save-interval 2 {SHORT} --save {tmp_path / 'ck'}")
    return tmp_path / "ck"


def test_missing_tracker_is_refused_and_nothing_is_overwritten(corpus, trained, capsys):
    os.remove(trained / checkpointing.TRACKER)
    refused_leaving_untouched(
        corpus, trained, r"holds checkpoints \[2, 4\] but no latest_checkpointed_iteration.txt.*--ckpt-step 4",
        f"--train-iters 4 {SHORT} --load {trained} --save {trained}",
    )
    # --ckpt-step names the checkpoint; the run then continues from it
    records = run(corpus, f"--train-iters 6 --override-opt_param-scheduler {SHORT} --load {trained} --save {trained} --ckpt-step 4")
    assert [r["iteration"] for r in records] == [5, 6]
    assert "--load" in capsys.readouterr().out


def test_a_fresh_run_does_not_overwrite_checkpoints_in_save(corpus, trained):
    refused_leaving_untouched(corpus, trained, r"--save .* holds checkpoints \[2, 4\] that this run did not resume from", f"--train-iters 4 {SHORT} --save {trained}")
    # resuming an earlier step would supersede the later checkpoint: refused too
    os.remove(trained / checkpointing.TRACKER)
    with pytest.raises(SystemExit, match=r"holds checkpoints \[4\] that this run did not resume from"):
        run(corpus, f"--train-iters 4 {SHORT} --load {trained} --save {trained} --ckpt-step 2")
    run(corpus, f"--train-iters 4 {SHORT} --save {trained} --overwrite-checkpoints")  # told to: allowed
    assert checkpointing.latest_iteration(str(trained)) == 4


def test_load_says_what_it_found(corpus, tmp_path, capsys):
    run(corpus, f"--train-iters 3 {SHORT} --load {tmp_path / 'nothing'}")
    assert "no checkpoint there; training starts from iteration 0" in capsys.readouterr().out


def test_failed_start_does_not_touch_args_json(corpus, trained):
    refused_leaving_untouched(
        corpus, trained, r"typo.idx does not exist",
        f"--train-iters 6 --override-opt_param-scheduler {SHORT} --load {trained} --save {trained} --data-path {trained / 'typo'}",
    )
    record = json.loads((trained / "iter_0000004" / "args.json").read_text())
    assert record == json.loads((trained / "args.json").read_text())
    assert "--train-iters" in record["argv"] and len(record["tokenizer_sha256"]) == 64


def test_schedule_flags_that_differ_are_refused_unless_overridden(corpus, trained):
    with pytest.raises(SystemExit, match=r"another schedule: --lr 0.001 \(this run\) vs 0.003 \(checkpoint\).*--override-opt_param-scheduler"):
        run(corpus, f"--train-iters 4 --lr 1e-3 {SHORT} --load {trained} --save {trained}")
    with pytest.raises(SystemExit, match=r"--train-iters 8 \(this run\) vs 4 \(checkpoint\)"):
        run(corpus, f"--train-iters 8 {SHORT} --load {trained} --save {trained}")
    shutil.copytree(trained, trained.parent / "copy")
    # extending with the flags' schedule: the learning rate decays over 8 steps, not stuck at the end of 4
    extended = run(corpus, f"--train-iters 8 --override-opt_param-scheduler {SHORT} --load {trained} --save {trained}")
    assert [r["iteration"] for r in extended] == [5, 6, 7, 8]
    assert extended[0]["lr"] > 3e-4 * 1.5  # cosine from 3e-3 to 3e-4 over 8 steps: step 5 is well above the minimum
    # keeping the checkpoint's schedule: the decay ended at step 4, so the minimum learning rate
    kept = run(corpus, f"--train-iters 8 --use-checkpoint-opt_param-scheduler {SHORT} --load {trained.parent / 'copy'} --save {trained.parent / 'copy'}")
    assert kept[0]["lr"] == pytest.approx(3e-4)


def test_another_architecture_or_tokenizer_is_refused(corpus, trained, tmp_path):
    with pytest.raises(SystemExit, match=r"another model: .*--num-attention-heads 4 \(checkpoint\) vs 8 \(this run\)"):
        run(corpus, f"--train-iters 6 --num-attention-heads 8 --kv-channels 16 --override-opt_param-scheduler {SHORT} --load {trained} --save {trained}")
    prefix, tokenizer = corpus
    other = tmp_path / "other_tokenizer.json"
    text = json.loads(open(tokenizer).read())
    text["model"]["vocab"] = dict(reversed(list(text["model"]["vocab"].items())))  # same size, other ids
    other.write_text(json.dumps(text))
    with pytest.raises(SystemExit, match="is not the tokenizer .* was trained with"):
        run(corpus, f"--train-iters 6 --override-opt_param-scheduler {SHORT} --load {trained} --save {trained} --tokenizer-model {other}")


def test_train_iters_below_or_at_the_checkpoint(corpus, trained, capsys):
    with pytest.raises(SystemExit, match=r"--train-iters 3 is below the checkpoint's iteration 4"):
        run(corpus, f"--train-iters 3 --override-opt_param-scheduler {SHORT} --load {trained} --save {trained}")
    before = snapshot(trained)
    assert run(corpus, f"--train-iters 4 {SHORT} --load {trained} --save {trained}") == []
    assert "nothing to train" in capsys.readouterr().out
    assert snapshot(trained) == before  # not saved again


def _edit_records(directory, edit) -> None:
    """Apply ``edit`` to every args.json of a checkpoint directory (the root's and each iteration's)."""
    for root, _, names in os.walk(directory):
        if "args.json" in names:
            path = os.path.join(root, "args.json")
            record = json.loads(open(path).read())
            edit(record)
            with open(path, "w") as f:
                json.dump(record, f)


def test_other_fp4_arithmetic_is_refused_unless_overridden(corpus, trained, capsys):
    """A resume must not silently train on with other FP4 arithmetic: a changed flag, a preset
    whose default changed between versions (the checkpoint's effective recipe is in args.json),
    FP4 -> BF16. --override-fp4-recipe continues and the log says what changed."""
    record = json.loads((trained / "iter_0000004" / "args.json").read_text())
    assert record["fp4"]["recipe"]["name"] == "paper" and record["fp4"]["recipe"]["occ"]["compensation"] == "inline"
    refused_leaving_untouched(
        corpus, trained, r"other FP4 arithmetic: recipe.occ.compensation 'inline' \(checkpoint\) vs 'exact' \(this run\).*--override-fp4-recipe",
        f"--train-iters 4 {SHORT} --fp4-occ-compensation exact --load {trained} --save {trained}",
    )
    before = snapshot(trained)
    bf16_argv = [flag for flag in argv(corpus, f"--train-iters 4 {SHORT} --load {trained} --save {trained}") if flag != "--fp4"]
    with pytest.raises(SystemExit, match=r"FP4 recipe 'paper' \(checkpoint\) vs BF16 \(no FP4\) \(this run\)"):
        pretrain_gpt.main(bf16_argv)
    assert snapshot(trained) == before

    def older_default(record):  # as if trained when `paper` compensated exactly by default
        record["fp4"]["recipe"]["occ"]["compensation"] = "exact"

    _edit_records(trained, older_default)
    refused_leaving_untouched(corpus, trained, r"recipe.occ.compensation 'exact' \(checkpoint\) vs 'inline' \(this run\)", f"--train-iters 4 {SHORT} --load {trained} --save {trained}")
    shutil.copytree(trained, trained.parent / "copy")
    capsys.readouterr()
    resumed = run(corpus, f"--train-iters 6 --override-opt_param-scheduler --override-fp4-recipe {SHORT} --load {trained} --save {trained}")
    assert [r["iteration"] for r in resumed] == [5, 6]
    assert "--override-fp4-recipe: continuing with this run's FP4 arithmetic" in capsys.readouterr().out
    # the same flags as the checkpoint's recipe: accepted without the override
    run(corpus, f"--train-iters 6 --override-opt_param-scheduler --fp4-occ-compensation exact {SHORT} --load {trained.parent / 'copy'} --save {trained.parent / 'copy'}")


def test_checkpoints_without_a_recipe_record_still_resume(corpus, trained):
    """args.json written before the recipe was recorded: nothing to compare, the resume goes on."""
    _edit_records(trained, lambda record: record.pop("fp4"))
    resumed = run(corpus, f"--train-iters 6 --override-opt_param-scheduler --fp4-occ-compensation exact {SHORT} --load {trained} --save {trained}")
    assert [r["iteration"] for r in resumed] == [5, 6]
