"""NaN/Inf loss or gradients: the run stops naming the iteration (and, in check-finite mode, the
layer), and a non-finite model is never saved or marked latest."""


import pytest

from megatron_fp4.training import checkpointing

from training.test_pretrain import run

# a learning rate that turns the weights to Inf after the first step (the second step's
# gradient norm is NaN); constant, so the first step already uses it
EXPLODING = "--lr 1e36 --min-lr 0 --lr-warmup-iters 0 --lr-decay-style constant --clip-grad 0 --hidden-dropout 0 --attention-dropout 0"


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    with pytest.raises(SystemExit, match=r"iteration 2: lm loss .*, grad norm nan: not finite; stopped without saving \(latest checkpoint: .*iter_0000001\)"):
        run(corpus, f"--train-iters 6 --save-interval 1 --save {tmp_path} {EXPLODING}")
    assert checkpointing.latest_iteration(str(tmp_path)) == 1
    assert checkpointing.checkpoint_iterations(str(tmp_path)) == [1]


def test_training_on_past_nan_still_never_saves_it(corpus, tmp_path):
    with pytest.raises(SystemExit, match=r"not saving iteration 2 .* holds NaN/Inf"):
        run(corpus, f"--train-iters 6 --save-interval 1 --save {tmp_path} --no-check-for-nan-in-loss-and-grad {EXPLODING}")
    assert checkpointing.latest_iteration(str(tmp_path)) == 1


def test_check_finite_mode_names_the_layer(corpus, monkeypatch):
    monkeypatch.setenv("MEGATRON_FP4_CHECK_FINITE", "1")
    with pytest.raises(SystemExit, match=r"decoder\.layers\.\d\.[a-z_.0-9]+ (input|weight|output gradient): \d+ NaN"):
        run(corpus, f"--train-iters 6 {EXPLODING}")
