"""Activation fidelity of FP4 with and without OCC, on real activations of a trained model.

    python examples/reproduce/activation_fidelity.py OUT.json --load CKPT <the run's model/data flags>

Captures the input of every linear layer of the decoder (QKV, attention output projection,
fc1, fc2) on one validation batch of a trained (BF16) model, and measures on each the direct
per-token E2M1 cast, clamping only, and clamping with sparse compensation at
α ∈ {0.999, 0.99, 0.97}: cosine similarity, MSE and SNR against the unquantized input (the
paper's activation table); and, at α = 0.99, the same statistics of each linear's FP4 output
against A W^T for every OCC compensation (``fidelity.gemm_output_ablation``). Writes the
per-layer rows and their means over layers.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from megatron_fp4.fidelity import activation_ablation, format_table, gemm_output_ablation, hot_channel_energy_share
from megatron_fp4.training.arguments import parse_args, transformer_config_from_args
from megatron_fp4.training.checkpointing import load_model_weights
from megatron_fp4.training.data import build_datasets, micro_batches
from megatron_fp4.training.tokenizer import build_tokenizer
from megatron_fp4.training.trainer import build_model, initialize_distributed


def capture_linear_inputs(model, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(input, weight) of every decoder linear layer on one batch, by layer name."""
    inputs, weights, handles = {}, {}, []
    for name, module in model.named_modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)) and "output_layer" not in name:
            hook = lambda _, args, name=name: inputs.__setitem__(name, args[0].detach().reshape(-1, args[0].shape[-1]))  # noqa: E731
            handles.append(module.register_forward_pre_hook(hook))
            weights[name] = module.weight.detach()
    with torch.no_grad():
        model(batch["tokens"], batch["position_ids"], None)
    for handle in handles:
        handle.remove()
    return inputs, weights


def mean_over_layers(per_layer: dict) -> list[dict]:
    """The per-method mean of each statistic over the layers' ablation rows."""
    keys = [(row.method, row.alpha) for row in next(iter(per_layer.values()))]
    mean = []
    for index, (method, alpha) in enumerate(keys):
        rows = [layer_rows[index] for layer_rows in per_layer.values()]
        mean.append({
            "method": method, "alpha": alpha,
            **{stat: sum(getattr(r, stat) for r in rows) / len(rows) for stat in ("cosine", "mse", "snr_db", "clamp_fraction")},
        })
    return mean


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: activation_fidelity.py OUT.json --load CKPT <model and data flags>")
    out, args = sys.argv[1], parse_args(sys.argv[2:])
    if not args.load:
        raise SystemExit("error: --load is required (the trained checkpoint)")
    device = initialize_distributed(args)
    tokenizer = build_tokenizer(args)
    model = build_model(args, transformer_config_from_args(args), tokenizer).to(device)
    iteration = load_model_weights(args.load, model)
    model.eval()
    _, valid = build_datasets(args, tokenizer)
    batch = micro_batches(valid, 0, args.micro_batch_size, args.micro_batch_size, 0, 1, device)[0]
    inputs, weights = capture_linear_inputs(model, batch)
    per_layer = {name: activation_ablation(x) for name, x in inputs.items()}
    per_layer_output = {name: gemm_output_ablation(x, weights[name]) for name, x in inputs.items()}
    energy = {name: hot_channel_energy_share(x) for name, x in inputs.items()}
    mean, output_mean = mean_over_layers(per_layer), mean_over_layers(per_layer_output)
    report = {
        "checkpoint": args.load, "iteration": iteration, "tokens": int(batch["tokens"].numel()), "layers": len(per_layer),
        "mean": mean,
        "output_mean": output_mean,
        "per_layer_output": {name: [dataclasses.asdict(row) for row in rows] for name, rows in per_layer_output.items()},
        "hot_channel_energy_share": {"mean": sum(energy.values()) / len(energy), "min": min(energy.values()), "per_layer": energy},
        "per_layer": {name: [dataclasses.asdict(row) for row in rows] for name, rows in per_layer.items()},
    }
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{len(per_layer)} linear inputs, {report['tokens']} tokens, checkpoint iteration {iteration}; first layer:")
    print(format_table(next(iter(per_layer.values()))))
    print(f"hot-channel compensation keeps {report['hot_channel_energy_share']['mean']:.1%} of the clamped energy on average "
          f"(lowest layer {report['hot_channel_energy_share']['min']:.1%})")
    for row in mean:
        print(f"mean over layers: {row['method']:<12} alpha {row['alpha']} SNR {row['snr_db']:.2f} dB cos {row['cosine']:.5f}")
    for row in output_mean:  # what training sees: the linear's output with its FP4 weight
        print(f"linear output, mean over layers: {row['method']:<12} alpha {row['alpha']} SNR {row['snr_db']:.2f} dB cos {row['cosine']:.5f}")


if __name__ == "__main__":
    main()
