"""Every number and plot of docs/RESULTS.md, regenerated from the reproduction logs.

    python examples/reproduce/report.py LOGDIR [--seeds LOGDIR_SEED2 ...] [--lr-sweep DIR ...]
        [--section NAME] [--docs docs]

Reads LOGDIR/<run>.log (the trainer's own log lines) and LOGDIR/fidelity.json, writes
docs/results/loss_curves[_NAME].png and gap_vs_tokens[_NAME].png and replaces the block between
the ``generated`` markers of docs/RESULTS.md (``<!-- generated:NAME:start -->`` ... with
``--section NAME``, so several experiments share the page) with fresh tables; the prose around it
is kept. ``--seeds``: log directories of the same runs with other ``SEED`` s
(examples/reproduce/run_all.sh): the final validation loss per seed, the mean and the spread, to
state the noise. ``--lr-sweep``: directories each holding a ``bf16.log`` trained with another
learning rate (the peak lr is read from the logged schedule): the BF16 baseline's tuning table.
A run stopped early is reported at its last evaluation, against BF16 at the same step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics

ITERATION = re.compile(r"iteration\s+(\d+)/(\d+) \| consumed tokens\s+(\d+) \| lm loss ([\d.naninf]+) .*\| tokens/s ([\d,]+)")
LEARNING_RATE = re.compile(r"\| lr ([\d.]+e[-+]\d+) \|")
DGE_HEALTH = re.compile(r"fp4 health at iteration (\d+):.*DGE factor mean ([\d.]+), \|g\|-weighted ([\d.]+), update norm x([\d.]+), at clamp ([\d.]+)%")
STEP_VS_FACTOR = re.compile(r"optimizer step vs DGE factor: corr ([-+\d.naninf]+), \|dW\| f'>=1 / f'<1 x([\d.naninf]+)")
VALIDATION = re.compile(r"validation loss at iteration (\d+): ([\d.naninf]+)")
ORDER = ["bf16", "bf16_alone", "paper", "direct", "paper_no_dge", "paper_no_occ", "paper_exact_occ", "paper_fp8_occ", "paper_inline_occ", "paper_hot_occ", "paper_fwd_occ", "bf16_dge",
         "paper_dge_k3", "paper_dge_k10", "paper_dge_max1", "nvfp4", "mxfp4"]
LABELS = {
    "bf16": "BF16 (no FP4)",
    "bf16_alone": "BF16, second run",
    "paper": "FP4 `paper` (DGE + OCC)",
    "direct": "FP4 `direct` cast",
    "paper_no_dge": "FP4 `paper` without DGE",
    "paper_no_occ": "FP4 `paper` without OCC",
    "paper_exact_occ": "FP4 `paper`, exact OCC compensation",
    "paper_fp8_occ": "FP4 `paper`, FP8 OCC compensation",
    "paper_inline_occ": "FP4 `paper`, inline OCC compensation (E4M3 in the operand)",
    "paper_hot_occ": "FP4 `paper`, hot-channel OCC compensation",
    "paper_fwd_occ": "FP4 `paper`, OCC compensating the forward only",
    "bf16_dge": "BF16 with the DGE factor",
    "paper_dge_k3": "FP4 `paper`, DGE k = 3",
    "paper_dge_k10": "FP4 `paper`, DGE k = 10",
    "paper_dge_max1": "FP4 `paper`, DGE clamped at 1 (shrinks only)",
    "nvfp4": "NVFP4",
    "mxfp4": "MXFP4",
}
START, END = "<!-- generated:start -->", "<!-- generated:end -->"


def parse_log(path: str) -> dict:
    train, valid, speeds, planned, tokens, lrs, dge = [], [], [], None, {}, [], []
    with open(path, errors="replace") as f:
        for line in f:
            if match := ITERATION.search(line):
                iteration, total, consumed, loss, speed = match.groups()
                train.append((int(iteration), float(loss)))
                speeds.append(float(speed.replace(",", "")))
                planned = int(total)
                tokens[int(iteration)] = int(consumed)
                if rate := LEARNING_RATE.search(line):
                    lrs.append(float(rate.group(1)))
            elif match := VALIDATION.search(line):
                step = (int(match.group(1)), float(match.group(2)))
                if step not in valid:  # the last evaluation is logged twice when it falls on an interval
                    valid.append(step)
            elif match := DGE_HEALTH.search(line):
                step = STEP_VS_FACTOR.search(line)  # logs from session 5 on: the optimizer step against f'
                dge.append(tuple(float(v) for v in match.groups()) + (tuple(float(v) for v in step.groups()) if step else (None, None)))
    return {"train": train, "valid": valid, "speeds": speeds, "planned": planned, "tokens": tokens,
            "peak_lr": max(lrs) if lrs else None, "dge": dge}


def tokens_at(run: dict, step: int) -> int | None:
    """Tokens consumed by ``step`` (from the log, else extrapolated from the logged rate)."""
    if step in run["tokens"]:
        return run["tokens"][step]
    if run["tokens"]:
        last = max(run["tokens"])
        return run["tokens"][last] * step // last
    return None


def load_runs(logdir: str) -> dict[str, dict]:
    runs = {}
    for name in ORDER + sorted(set(f[:-4] for f in os.listdir(logdir) if f.endswith(".log")) - set(ORDER)):
        path = os.path.join(logdir, f"{name}.log")
        if os.path.exists(path) and name in LABELS:
            run = parse_log(path)
            if run["train"]:
                runs[name] = run
    return runs


def summary_rows(runs: dict[str, dict]) -> list[dict]:
    """One row per run: its last evaluation, compared with BF16's at that same step."""
    base = runs.get("bf16")
    rows = []
    for name, run in runs.items():
        reached = run["train"][-1][0]
        last_common, final_valid = run["valid"][-1] if run["valid"] else (None, None)
        # the training loss next to that evaluation (a run stopped after it logged more iterations)
        before = [loss for step, loss in run["train"] if last_common is None or step <= last_common] or [run["train"][0][1]]
        final_train = statistics.mean(before[-5:])
        gap = None
        if base is not None and final_valid is not None and last_common in dict(base["valid"]):
            gap = final_valid / dict(base["valid"])[last_common] - 1
        speeds = run["speeds"][1:] or run["speeds"]  # the first window includes compilation
        rows.append({
            "name": name, "reached": reached, "planned": run["planned"], "train": final_train,
            "valid_step": last_common, "valid": final_valid, "gap": gap, "tokens_per_s": statistics.median(speeds),
        })
    return rows


def runs_table(rows: list[dict]) -> str:
    lines = [
        "| run | iterations | train loss (last 5 logs to that step) | validation loss @ step | vs BF16 (same step) | validation - train | tokens/s (median of logs) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        gap = "-" if r["gap"] is None else f"{r['gap']:+.2%}"
        reached = f"{r['reached']}/{r['planned']}"
        valid = "-" if r["valid"] is None else f"{r['valid']:.4f} @ {r['valid_step']}"
        generalization = "-" if r["valid"] is None else f"{r['valid'] - r['train']:+.4f}"
        lines.append(f"| {LABELS[r['name']]} (`{r['name']}`) | {reached} | {r['train']:.4f} | {valid} | {gap} | {generalization} | {r['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def validation_table(runs: dict[str, dict]) -> str:
    steps = sorted(set.union(*(set(i for i, _ in r["valid"]) for r in runs.values())))
    first = next(iter(runs.values()))
    lines = ["| step | tokens | " + " | ".join(LABELS[n] for n in runs) + " |", "| --- | --- |" + " --- |" * len(runs)]
    for step in steps:
        cells = [f"{dict(r['valid'])[step]:.4f}" if step in dict(r["valid"]) else "-" for r in runs.values()]
        consumed = tokens_at(first, step)
        lines.append(f"| {step} | {'-' if consumed is None else f'{consumed / 1e6:.2f}M'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_table(runs: dict[str, dict]) -> str:
    """Validation loss of each run relative to BF16's at every evaluation both have: the gap vs tokens."""
    base = dict(runs["bf16"]["valid"]) if "bf16" in runs else {}
    others = [n for n in runs if n != "bf16"]
    lines = ["| step | tokens | " + " | ".join(LABELS[n] for n in others) + " |", "| --- | --- |" + " --- |" * len(others)]
    for step in sorted(base):
        cells = [f"{dict(runs[n]['valid'])[step] / base[step] - 1:+.2%}" if step in dict(runs[n]["valid"]) else "-" for n in others]
        consumed = tokens_at(runs["bf16"], step)
        lines.append(f"| {step} | {'-' if consumed is None else f'{consumed / 1e6:.2f}M'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lr_sweep_table(directories: list[str]) -> str:
    """BF16's final validation loss per peak learning rate (one ``bf16.log`` per directory)."""
    rows = []
    for directory in directories:
        run = parse_log(os.path.join(directory, "bf16.log"))
        last = run["valid"][-1] if run["valid"] else (None, None)
        rows.append((run["peak_lr"], last, run["train"][-1][0] if run["train"] else 0, run["planned"]))
    lines = ["| BF16 peak lr | iterations | validation loss @ step |", "| --- | --- | --- |"]
    for peak, (step, loss), reached, planned in sorted(rows, key=lambda r: r[0] or 0.0):
        lines.append(f"| {'-' if peak is None else f'{peak:.0e}'} | {reached}/{planned} | {'-' if loss is None else f'{loss:.4f} @ {step}'} |")
    return "\n".join(lines)


def dge_table(runs: dict[str, dict]) -> str:
    """The DGE statistics the health telemetry logged (mean over layers per interval): how the
    factor f'(W/s) reshapes the weight gradient as training goes."""
    logged = {n: r["dge"] for n, r in runs.items() if r["dge"]}
    if not logged:
        return "(no DGE statistics in these logs)"
    lines = ["| run | iteration | DGE factor mean | |g|-weighted factor | update norm ratio ||g f'|| / ||g|| | at the clamp "
             "| corr(f', optimizer step) | step where f' >= 1 / f' < 1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in logged.items():
        for iteration, mean, weighted, norm, clamp, corr, ratio in rows:
            step = "- | -" if corr is None else f"{corr:+.3f} | {ratio:.3f}"
            lines.append(f"| {LABELS[name]} | {int(iteration)} | {mean:.3f} | {weighted:.3f} | {norm:.3f} | {clamp:.2f}% | {step} |")
    return "\n".join(lines)


def seeds_table(logdirs: list[str]) -> str:
    """Final validation loss of each run in every seed directory, their mean and spread
    ((max - min) / mean): the noise the differences between runs are to be read against."""
    per_dir = [{row["name"]: row["valid"] for row in summary_rows(load_runs(d))} for d in logdirs]
    names = [n for n in ORDER if sum(n in runs and runs[n] is not None for runs in per_dir) >= 2]
    lines = ["| run | " + " | ".join(os.path.basename(os.path.normpath(d)) for d in logdirs) + " | mean | spread |",
             "| --- |" + " --- |" * (len(logdirs) + 2)]
    for name in names:
        values = [runs.get(name) for runs in per_dir]
        present = [v for v in values if v is not None]
        mean = statistics.mean(present)
        cells = " | ".join("-" if v is None else f"{v:.4f}" for v in values)
        lines.append(f"| {LABELS[name]} | {cells} | {mean:.4f} | {(max(present) - min(present)) / mean:.2%} |")
    return "\n".join(lines)


def _fidelity_rows(rows: list[dict], with_clamped: bool) -> list[str]:
    """A markdown table of fidelity rows (method, α, cosine, MSE, SNR[, share clamped])."""
    head = "| method | α | cosine similarity | MSE | SNR (dB) |" + (" entries clamped |" if with_clamped else "")
    lines = [head, "| --- " * (head.count("|") - 1) + "|"]
    for row in rows:
        alpha = "-" if row["alpha"] is None else f"{row['alpha']:g}"
        clamped = f" {row['clamp_fraction']:.2%} |" if with_clamped else ""
        lines.append(f"| {row['method']} | {alpha} | {row['cosine']:.4f} | {row['mse']:.3e} | {row['snr_db']:.2f} |{clamped}")
    return lines


def fidelity_table(path: str) -> str:
    if not os.path.exists(path):
        return "(no fidelity.json in the log directory)"
    with open(path) as f:
        report = json.load(f)
    lines = [
        f"Mean over the {report['layers']} linear-layer inputs of the trained BF16 model (checkpoint iteration "
        f"{report['iteration']}, one validation batch of {report['tokens']} tokens); per-token E2M1.",
        "",
        *_fidelity_rows(report["mean"], with_clamped=True),
    ]
    if "output_mean" in report:  # what training sees: each linear's FP4 output against A W^T
        lines += [
            "",
            "The linear layers' outputs (FP4 weight and activation, each OCC compensation) against A W^T, mean over the layers:",
            "",
            *_fidelity_rows(report["output_mean"], with_clamped=False),
        ]
    return "\n".join(lines)


def plot_gap(runs: dict[str, dict], path: str) -> None:
    """Validation loss relative to BF16 against tokens consumed, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = dict(runs["bf16"]["valid"])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        if name == "bf16":
            continue
        points = [(tokens_at(run, step) / 1e6, loss / base[step] - 1) for step, loss in run["valid"] if step in base]
        if points:
            axis.plot(*zip(*points), marker="o", label=LABELS[name])
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set(title="validation loss relative to BF16", xlabel="tokens consumed (millions)", ylabel="(loss / BF16 loss) - 1")
    axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot(runs: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (train_axis, valid_axis) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, run in runs.items():
        steps, losses = zip(*run["train"])
        window = 5
        smooth = [statistics.mean(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
        train_axis.plot(steps, smooth, label=LABELS[name])
        if run["valid"]:
            valid_axis.plot(*zip(*run["valid"]), marker="o", label=LABELS[name])
    train_axis.set(title="training loss (moving mean of 5 logs)", xlabel="iteration", ylabel="lm loss")
    valid_axis.set(title="validation loss", xlabel="iteration", ylabel="lm loss")
    low = min(min(l for _, l in r["train"]) for r in runs.values())
    train_axis.set_ylim(low - 0.1, low + 2.5)
    for axis in (train_axis, valid_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--seeds", nargs="+", default=[], help="log directories of the same runs with other seeds")
    parser.add_argument("--lr-sweep", nargs="+", default=[], help="directories each holding a bf16.log at another learning rate")
    parser.add_argument("--section", default=None, help="write between <!-- generated:SECTION:start/end --> (default: the main block)")
    args = parser.parse_args()
    for flag, directory in [("LOGDIR", args.logdir)] + [("--seeds", d) for d in args.seeds] + [("--lr-sweep", d) for d in args.lr_sweep]:
        if not os.path.isdir(directory):
            raise SystemExit(f"error: {flag} {directory}: no such directory")
    for directory in args.seeds:
        if not load_runs(directory):
            raise SystemExit(f"error: --seeds {directory}: no run logs with iterations there")
    for directory in args.lr_sweep:
        if not os.path.exists(os.path.join(directory, "bf16.log")):
            raise SystemExit(f"error: --lr-sweep {directory}: no bf16.log there")
    if args.section is not None and not re.fullmatch(r"[a-z0-9-]+", args.section):
        raise SystemExit(f"error: --section {args.section!r}: use lower-case letters, digits and '-'")
    runs = load_runs(args.logdir)
    if not runs:
        raise SystemExit(f"error: no run logs with iterations under {args.logdir}")
    suffix = f"_{args.section}" if args.section else ""
    start, end = (f"<!-- generated:{args.section}:start -->", f"<!-- generated:{args.section}:end -->") if args.section else (START, END)
    results = os.path.join(args.docs, "RESULTS.md")
    text = open(results).read() if os.path.exists(results) else f"# Results\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        if args.section is None or start in text or end in text:
            raise SystemExit(f"error: {results} lacks the {start} / {end} markers")
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"  # a new section goes at the end
    os.makedirs(os.path.join(args.docs, "results"), exist_ok=True)
    plot(runs, os.path.join(args.docs, "results", f"loss_curves{suffix}.png"))
    has_gap = "bf16" in runs and len(runs) > 1
    if has_gap:
        plot_gap(runs, os.path.join(args.docs, "results", f"gap_vs_tokens{suffix}.png"))
    setup = os.path.join(args.logdir, "setup.txt")
    setup_text = open(setup).read().strip() if os.path.exists(setup) else ""
    generated = "\n\n".join([
        start,
        f"Generated by `python examples/reproduce/report.py` from the run logs. Setup: `{setup_text}`",
        "### Runs\n\n" + runs_table(summary_rows(runs)),
        "### Validation loss at every evaluation\n\n" + validation_table(runs),
        *(["### Validation loss relative to BF16 (the gap vs tokens)\n\n" + gap_table(runs)
           + f"\n\n![gap vs tokens](results/gap_vs_tokens{suffix}.png)"] if has_gap else []),
        *(["### BF16 learning-rate sweep (final validation loss)\n\n" + lr_sweep_table(args.lr_sweep)] if args.lr_sweep else []),
        *(["### Seeds (final validation loss)\n\n" + seeds_table([args.logdir, *args.seeds])] if args.seeds else []),
        f"![loss curves](results/loss_curves{suffix}.png)",
        "### DGE statistics (health telemetry, mean over the linear layers)\n\n" + dge_table(runs),
        "### Activation fidelity on real activations\n\n" + fidelity_table(os.path.join(args.logdir, "fidelity.json")),
        end,
    ])
    text = text[: text.index(start)] + generated + text[text.index(end) + len(end):]
    with open(results, "w") as f:
        f.write(text)
    print(f"updated {results} and {args.docs}/results/loss_curves{suffix}.png from {len(runs)} runs")


if __name__ == "__main__":
    main()
