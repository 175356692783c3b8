import os

from megatron_fp4.tools import quickstart


def test_quickstart_runs_both_precisions_and_writes_the_plot(tmp_path):
    curves = quickstart.main(["--out", str(tmp_path), "--train-iters", "4", "--eval-interval", "2", "--vocab-size", "512"])
    assert len(curves) == 2 and all(len(records) == 4 for records in curves.values())
    assert os.path.getsize(tmp_path / "loss_curves.png") > 10_000
    assert all("validation loss" in records[-1] for records in curves.values())
