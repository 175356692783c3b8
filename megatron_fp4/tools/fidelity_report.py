"""Activation-quantization fidelity table (paper §3.2): direct cast vs clamp vs clamp+compensation.

    python -m megatron_fp4.tools.fidelity_report                 # synthetic LLM-like activation
    python -m megatron_fp4.tools.fidelity_report --input act.pt  # a saved activation tensor
"""

from __future__ import annotations

import argparse

import torch

from ..fidelity import activation_ablation, format_table, synthetic_llm_activation
from ..occ import OCCConfig
from ..quantize import QuantSpec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="torch.save'd activation tensor [..., hidden]; default: synthetic")
    parser.add_argument("--tokens", type=int, default=4096, help="synthetic activation: tokens (rows)")
    parser.add_argument("--hidden", type=int, default=2048, help="synthetic activation: hidden size (columns)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic activation: seed")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.999, 0.99, 0.97], help="OCC quantiles")
    parser.add_argument("--fp4-format", default="e2m1", choices=["e2m1", "e1m2", "e3m0"])
    parser.add_argument("--granularity", default="row", choices=["row", "tensor", "nvfp4", "mxfp4"])
    parser.add_argument("--occ-scope", default="tensor", choices=["tensor", "row"])
    parser.add_argument("--occ-symmetric", action="store_true", help="clamp to ±q_alpha(|A|)")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    if args.input:
        activation = torch.load(args.input, map_location="cpu")
        if not isinstance(activation, torch.Tensor) or activation.dim() < 2:
            raise SystemExit(f"--input {args.input}: expected a tensor with at least 2 dims")
        source = f"{args.input} {tuple(activation.shape)}"
    else:
        activation = synthetic_llm_activation(args.tokens, args.hidden, args.seed)
        source = f"synthetic LLM-like activation {args.tokens}x{args.hidden} (seed {args.seed})"
    spec = QuantSpec("fp4", args.granularity, args.fp4_format)
    occ = OCCConfig(scope=args.occ_scope, symmetric=args.occ_symmetric)
    table = format_table(activation_ablation(activation, tuple(args.alphas), spec, occ))
    report = f"FP4 activation fidelity: {source}; quantizer {spec.describe()}; OCC scope {occ.scope}\n{table}"
    print(report)
    return report


if __name__ == "__main__":
    main()
