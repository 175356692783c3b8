"""examples/reproduce/report.py regenerates the tables of docs/RESULTS.md from the committed logs."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_report_rebuilds_the_tables_from_the_logs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(os.path.join(REPO, "docs", "RESULTS.md"), docs / "RESULTS.md")
    before = (docs / "RESULTS.md").read_text()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "reproduce", "report.py"), os.path.join(REPO, "docs", "runs", "reproduce"), "--docs", str(docs)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    text = (docs / "RESULTS.md").read_text()
    assert text == before  # the committed page is exactly what the logs give
    assert "| FP4 `paper` (DGE + OCC) (`paper`) | 600/600 |" in text and "-3.60%" in text
    assert (docs / "results" / "loss_curves.png").stat().st_size > 10_000


def test_report_refuses_a_directory_without_logs(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "reproduce", "report.py"), str(tmp_path), "--docs", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode != 0 and "no run logs" in result.stderr


def test_seeds_table_states_the_noise(tmp_path):
    """--seeds: the final validation loss of the same runs at another seed, mean and spread
    (the committed OCC runs: exact and FP8 compensation at seeds 1234 and 4321)."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "reproduce", "report.py"), os.path.join(REPO, "docs", "runs", "occ_hot_channels"),
         "--seeds", os.path.join(REPO, "docs", "runs", "occ_fp8"), "--docs", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| FP4 `paper`, exact OCC compensation | 3.6375 | 3.7588 | 3.6982 | 3.28% |" in text
    assert "| FP4 `paper`, FP8 OCC compensation | 3.6439 | 3.7533 | 3.6986 | 2.96% |" in text
    missing = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "reproduce", "report.py"), os.path.join(REPO, "docs", "runs", "occ_fp8"), "--seeds", str(tmp_path / "nothing"), "--docs", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert missing.returncode != 0 and "--seeds" in missing.stderr


def test_no_repetition_section_with_the_lr_sweep_is_what_its_logs_give(tmp_path):
    """--section writes its own generated block (the main one untouched); --lr-sweep reads the peak
    lr from each bf16.log's schedule; runs stopped early are compared at their last evaluation."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(os.path.join(REPO, "docs", "RESULTS.md"), docs / "RESULTS.md")
    before = (docs / "RESULTS.md").read_text()
    sweep = [os.path.join(REPO, "docs", "runs", "norepeat", "lr_sweep", f"lr_{lr}") for lr in ("5e-4", "1e-3", "2e-3")]
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "reproduce", "report.py"), os.path.join(REPO, "docs", "runs", "norepeat", "seed1234"),
         "--section", "no-repetition", "--seeds", os.path.join(REPO, "docs", "runs", "norepeat", "seed4321"), "--lr-sweep", *sweep, "--docs", str(docs)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    text = (docs / "RESULTS.md").read_text()
    assert text == before  # the committed section is exactly what the logs give
    assert "| 5e-04 | 600/600 | 3.7606 @ 600 |" in text and "| 2e-03 | 600/600 | 3.9566 @ 600 |" in text
    assert "| BF16 (no FP4) | 3.7691 | 3.8771 | 3.8231 | 2.82% |" in text
    assert "| FP4 `paper` without DGE (`paper_no_dge`) | 600/600 |" in text and "3.8504 @ 500 | -1.59% |" in text
    assert (docs / "results" / "gap_vs_tokens_no-repetition.png").stat().st_size > 10_000
    bad = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "reproduce", "report.py"), os.path.join(REPO, "docs", "runs", "norepeat", "seed1234"),
         "--section", "No Spaces!", "--docs", str(docs)],
        capture_output=True, text=True, check=False,
    )
    assert bad.returncode != 0 and "--section" in bad.stderr


def test_report_reads_the_dge_statistics_health_logs(tmp_path):
    """The health line the trainer logs (health.format_summary) is what report.py parses, the
    optimizer-step-vs-factor statistics included."""
    import importlib.util

    import torch

    from megatron_fp4 import health

    with health.collecting() as records:
        health.record_weight_gradient("layer", torch.rand(8, 8), torch.rand(8, 8) * 2, 3.0)
        health.record_dge_update("layer", torch.tensor([0.5, 2.0, 0.4, 1.5]), torch.tensor([1.0, 3.0, 1.0, 2.0]))
    line = health.format_summary(health.summarize(records), 100)
    log = tmp_path / "paper.log"
    log.write_text(line + "\n iteration     100/100 | consumed tokens       1000 | lm loss 3.0000 | lr 1.000e-03 | grad norm 0.5 | tokens/s 1,000\n")
    spec = importlib.util.spec_from_file_location("report", os.path.join(REPO, "examples", "reproduce", "report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    (iteration, _, _, _, _, corr, ratio), = report.parse_log(str(log))["dge"]
    stats = health.summarize(records)["layer" + health.UPDATE_SUFFIX]
    assert iteration == 100 and abs(corr - stats["update_factor_corr"]) < 1e-3 and abs(ratio - stats["update_ratio_high_low"]) < 1e-3
