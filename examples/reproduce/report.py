"""Every number and plot of docs/RESULTS.md, regenerated from the reproduction logs.

    python examples/reproduce/report.py LOGDIR [--seeds LOGDIR_SEED2 ...] [--docs docs]

Reads LOGDIR/<run>.log (the trainer's own log lines) and LOGDIR/fidelity.json, writes
docs/results/loss_curves.png and replaces the block between the ``generated`` markers of
docs/RESULTS.md with fresh tables (the prose around it is kept). ``--seeds``: log directories of
the same runs with other ``SEED`` s (examples/reproduce/run_all.sh); adds the final validation
loss per seed, the mean and the spread, to state the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics

ITERATION = re.compile(r"iteration\s+(\d+)/(\d+) \| consumed tokens\s+(\d+) \| lm loss ([\d.naninf]+) .*\| tokens/s ([\d,]+)")
VALIDATION = re.compile(r"validation loss at iteration (\d+): ([\d.naninf]+)")
ORDER = ["bf16", "bf16_alone", "paper", "direct", "paper_no_dge", "paper_no_occ", "paper_exact_occ", "paper_fp8_occ", "paper_hot_occ", "bf16_dge", "nvfp4", "mxfp4"]
LABELS = {
    "bf16": "BF16 (no FP4)",
    "bf16_alone": "BF16, second run",
    "paper": "FP4 `paper` (DGE + OCC)",
    "direct": "FP4 `direct` cast",
    "paper_no_dge": "FP4 `paper` without DGE",
    "paper_no_occ": "FP4 `paper` without OCC",
    "paper_exact_occ": "FP4 `paper`, exact OCC compensation",
    "paper_fp8_occ": "FP4 `paper`, FP8 OCC compensation",
    "paper_hot_occ": "FP4 `paper`, hot-channel OCC compensation",
    "bf16_dge": "BF16 with the DGE factor (`bf16_dge`)",
    "nvfp4": "NVFP4",
    "mxfp4": "MXFP4",
}
START, END = "<!-- generated:start -->", "<!-- generated:end -->"


def parse_log(path: str) -> dict:
    train, valid, speeds, planned = [], [], [], None
    with open(path, errors="replace") as f:
        for line in f:
            if match := ITERATION.search(line):
                iteration, total, _, loss, speed = match.groups()
                train.append((int(iteration), float(loss)))
                speeds.append(float(speed.replace(",", "")))
                planned = int(total)
            elif match := VALIDATION.search(line):
                valid.append((int(match.group(1)), float(match.group(2))))
    return {"train": train, "valid": valid, "speeds": speeds, "planned": planned}


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
    base = runs.get("bf16")
    common_valid = set.intersection(*(set(i for i, _ in r["valid"]) for r in runs.values())) if runs else set()
    last_common = max(common_valid) if common_valid else None
    rows = []
    for name, run in runs.items():
        reached = run["train"][-1][0]
        final_train = statistics.mean(loss for _, loss in run["train"][-5:])
        valid = dict(run["valid"])
        final_valid = valid.get(last_common)
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
        "| run | iterations | train loss (last 5 logs) | validation loss @ step | vs BF16 | validation - train | tokens/s (median of logs) |",
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
    lines = ["| step | " + " | ".join(LABELS[n] for n in runs) + " |", "| --- |" + " --- |" * len(runs)]
    for step in steps:
        cells = [f"{dict(r['valid'])[step]:.4f}" if step in dict(r["valid"]) else "-" for r in runs.values()]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
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


def fidelity_table(path: str) -> str:
    if not os.path.exists(path):
        return "(no fidelity.json in the log directory)"
    with open(path) as f:
        report = json.load(f)
    lines = [
        f"Mean over the {report['layers']} linear-layer inputs of the trained BF16 model (checkpoint iteration "
        f"{report['iteration']}, one validation batch of {report['tokens']} tokens); per-token E2M1.",
        "",
        "| method | α | cosine similarity | MSE | SNR (dB) | entries clamped |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["mean"]:
        alpha = "-" if row["alpha"] is None else f"{row['alpha']:g}"
        lines.append(f"| {row['method']} | {alpha} | {row['cosine']:.4f} | {row['mse']:.3e} | {row['snr_db']:.2f} | {row['clamp_fraction']:.2%} |")
    return "\n".join(lines)


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
    args = parser.parse_args()
    for flag, directory in [("LOGDIR", args.logdir)] + [("--seeds", d) for d in args.seeds]:
        if not os.path.isdir(directory):
            raise SystemExit(f"error: {flag} {directory}: no such directory")
    for directory in args.seeds:
        if not load_runs(directory):
            raise SystemExit(f"error: --seeds {directory}: no run logs with iterations there")
    runs = load_runs(args.logdir)
    if not runs:
        raise SystemExit(f"error: no run logs with iterations under {args.logdir}")
    os.makedirs(os.path.join(args.docs, "results"), exist_ok=True)
    plot(runs, os.path.join(args.docs, "results", "loss_curves.png"))
    setup = os.path.join(args.logdir, "setup.txt")
    setup_text = open(setup).read().strip() if os.path.exists(setup) else ""
    generated = "\n\n".join([
        START,
        f"Generated by `python examples/reproduce/report.py` from the run logs. Setup: `{setup_text}`",
        "### Runs\n\n" + runs_table(summary_rows(runs)),
        "### Validation loss at every evaluation\n\n" + validation_table(runs),
        *(["### Seeds (final validation loss)\n\n" + seeds_table([args.logdir, *args.seeds])] if args.seeds else []),
        "![loss curves](results/loss_curves.png)",
        "### Activation fidelity on real activations\n\n" + fidelity_table(os.path.join(args.logdir, "fidelity.json")),
        END,
    ])
    results = os.path.join(args.docs, "RESULTS.md")
    text = open(results).read() if os.path.exists(results) else f"# Results\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        raise SystemExit(f"error: {results} lacks the {START} / {END} markers")
    text = text[: text.index(START)] + generated + text[text.index(END) + len(END):]
    with open(results, "w") as f:
        f.write(text)
    print(f"updated {results} and {args.docs}/results/loss_curves.png from {len(runs)} runs")


if __name__ == "__main__":
    main()
