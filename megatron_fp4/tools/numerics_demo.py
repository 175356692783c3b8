"""Numerics demo: what each FP4 recipe does to one linear layer, next to exact fp32.

    python -m megatron_fp4.tools.numerics_demo [--tokens 2048 --hidden 1024]

Prints the activation fidelity table (paper §3.2) and, per recipe, the relative error of the
layer's output, input gradient and weight gradient against fp32 autograd, plus the bytes saved
for backward, on an LLM-like activation with outlier channels.
"""

from __future__ import annotations

import argparse

import torch

from ..fidelity import activation_ablation, format_table, synthetic_llm_activation
from ..linear import fp4_linear
from ..recipe import RECIPES, DGEConfig, get_recipe


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def recipe_errors(tokens: int, hidden: int, seed: int) -> list[tuple[str, float, float, float, float]]:
    """(recipe, output error, dgrad error, wgrad error, saved bytes / bf16 bytes) per preset."""
    x = synthetic_llm_activation(tokens, hidden, seed).float()
    generator = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn(hidden, hidden, generator=generator) / hidden**0.5
    grad = torch.randn(tokens, hidden, generator=generator)
    xe, we = x.clone().requires_grad_(), weight.clone().requires_grad_()
    ye = xe @ we.t()
    exact = (ye, *torch.autograd.grad(ye, (xe, we), grad))
    rows = []
    recipes = {name: get_recipe(name) for name in RECIPES}
    recipes["paper-STE"] = get_recipe("paper", dge=DGEConfig(enabled=False))
    for name, recipe in recipes.items():
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        y = fp4_linear(xi, wi, None, recipe)
        state = getattr(y.grad_fn, "state", None)  # FP4 recipes only; read before backward frees it
        ratio = saved_activation_bytes(state) / (x.numel() * 2) if state is not None else 1.0
        gx, gw = torch.autograd.grad(y, (xi, wi), grad)
        rows.append((name, _relative_error(y, exact[0]), _relative_error(gx, exact[1]), _relative_error(gw, exact[2]), ratio))
    return rows


def saved_activation_bytes(state) -> int:
    """Bytes an FP4 linear keeps of its input for backward: quantized input + sparse residual."""
    residual = state.residual
    return state.x_saved.nbytes + (residual.nbytes if residual is not None else 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    activation = synthetic_llm_activation(args.tokens, args.hidden, args.seed)
    print(f"== Activation fidelity (E2M1, per-token scales), synthetic {args.tokens}x{args.hidden} activation ==")
    print(format_table(activation_ablation(activation)))
    print()
    print(f"== One {args.hidden}x{args.hidden} linear layer per recipe: relative error vs fp32 autograd ==")
    print(f"{'recipe':<10} {'output':>9} {'dgrad':>9} {'wgrad':>9} {'saved/bf16':>11}")
    for name, out, dgrad, wgrad, saved in recipe_errors(args.tokens, args.hidden, args.seed):
        print(f"{name:<10} {out:>9.4f} {dgrad:>9.4f} {wgrad:>9.4f} {saved:>11.2f}")
    print(
        "wgrad of `paper` differs from fp32 by design: DGE multiplies it by f'(W/s) in [0.2, 3] to model the\n"
        "quantizer (paper §3.1); `paper-STE` is the same recipe with DGE off. saved/bf16: activation bytes kept\n"
        "for backward (packed FP4 + scales + sparse OCC residual) over a bf16 copy."
    )
    print()
    for name in RECIPES:
        print(get_recipe(name).describe())


if __name__ == "__main__":
    main()
