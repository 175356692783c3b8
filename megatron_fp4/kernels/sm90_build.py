"""Build a Triton kernel for Hopper (sm90) on any machine and read what the compiler made of it.

Triton compiles to PTX and, with the ``ptxas`` its CUDA backend ships, to sm90 machine code
without a GPU. That answers questions device time is too scarce for: does a compiled-only branch
(the hardware FP8 conversion, a tensor-core dot, tensor-memory-accelerator descriptors) build at
all; does a tile configuration fit the 227 KB of shared memory a Hopper block may take; how many
registers a thread needs, whether it spills; and how many SASS instructions the kernel issues per
element, which is what limits the quantizers (benchmarks/NOTES.md, session 9: at ~33.5 T
lane-instructions/s an H200 streams a 3.5 B/element quantizer at copy bandwidth only below ~27
instructions per element).

The build specializes like the JIT does for LLaMA shapes: pointers 16-byte aligned and integer
arguments divisible by 16 (without that hint loads are not vectorized and the counts mislead).

It uses the Triton installed where it runs. Versions lay out the same source differently: a
variant that Triton 3.9 built with 160 registers took 214 under 3.6, the device's, and ran at
0.59 of copy bandwidth against the package kernel's 0.75 (benchmarks/NOTES.md, session 14). To
read the device's code, install its Triton into a folder of its own and put that first on the
path: ``pip install --no-deps --target /tmp/t36 triton==3.6.0``, then
``PYTHONPATH=/tmp/t36 python -m megatron_fp4.kernels.sm90_build``.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

__all__ = ["HOPPER_SHARED_MEMORY", "Sm90Build", "build_sm90", "tools_available"]

HOPPER_SHARED_MEMORY = 232448  # bytes of shared memory one block may use on sm90 (227 KB)


@dataclass(frozen=True)
class Sm90Build:
    """What one sm90 build holds: resources per thread / block and the SASS opcode counts."""

    registers: int
    stack_bytes: int  # per-thread stack frame: spilled registers live there
    shared_bytes: int  # dynamic shared memory the launch requests
    opcodes: Counter

    @property
    def instructions(self) -> int:
        return sum(self.opcodes.values())

    def uses(self, opcode: str) -> bool:
        """Whether an instruction of this opcode family (e.g. ``HGMMA``, ``F2FP``) occurs."""
        return any(name == opcode or name.startswith(opcode + ".") for name in self.opcodes)


def _cuobjdump() -> str:
    import triton.backends.nvidia as nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def tools_available() -> bool:
    """Triton with its CUDA backend and the ``cuobjdump`` it ships (present in the PyPI wheels)."""
    try:
        return os.access(_cuobjdump(), os.X_OK)
    except Exception:
        return False


def _opcode(line: str) -> str | None:
    """The opcode of one SASS line of ``cuobjdump --dump-sass`` (predicate guards skipped)."""
    if "*/" not in line or not line.strip().startswith("/*"):
        return None
    words = line.split("*/", 1)[1].replace(";", " ").split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else None


def build_sm90(fn, signature: dict[str, str], constexprs: dict, num_warps: int = 4, num_stages: int = 3) -> Sm90Build:
    """Compile ``fn`` (a ``triton.jit`` function) for sm90 with argument types ``signature``
    (``"*bf16"``, ``"i32"``, ``"tensordesc<bf16[128,64]>"``, ...) and ``constexprs`` (arguments
    with a default may be left out); raises
    what the compiler raises (a front-end or PTX error names the kernel and line)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    parameters = inspect.signature(fn.fn).parameters.values()  # the Python function (jitted or interpreted)
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty and p.name not in signature}
    constexprs = defaults | dict(constexprs)  # arguments with a default take it unless given
    if set(signature) & set(constexprs) or set(signature) | set(constexprs) != set(names):
        raise ValueError(f"build_sm90: {fn.__name__} takes {names}; got signature {sorted(signature)} and constexprs {sorted(constexprs)}")
    full = dict(signature) | {name: "constexpr" for name in constexprs}
    aligned = {(names.index(name),): [["tt.divisibility", 16]] for name, kind in signature.items() if kind.startswith("*") or kind == "i32"}
    source = ASTSource(fn=fn, signature=full, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=aligned)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as file:
            file.write(kernel.asm["cubin"])
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "--dump-sass", cubin], capture_output=True, text=True, check=True).stdout
    fields = dict(item.split(":", 1) for line in usage.splitlines() if "REG:" in line for item in line.split() if ":" in item)
    opcodes = Counter(op for op in map(_opcode, sass.splitlines()) if op)
    return Sm90Build(int(fields.get("REG", 0)), int(fields.get("STACK", 0)), int(kernel.metadata.shared), opcodes)


def standard_builds() -> dict[str, Sm90Build]:
    """The compiled-only branches of this package's kernels at their default settings, built for
    sm90: what ``tests/kernel_tests/test_sm90_build.py`` checks. (Needs compiled Triton functions:
    run it without ``TRITON_INTERPRET=1``, e.g. ``python -m megatron_fp4.kernels.sm90_build``.)"""
    import torch

    from . import block_gemm, quantize_nvfp4, quantize_rows, quantize_tokens

    rows = {"x_ptr": "*bf16", "scale_ptr": "*fp32", "bounds_ptr": "*fp32", "act_ptr": "*bf16", "norm_weight_ptr": "*bf16", "rstd_ptr": "*fp32", "M": "i32", "stride_x": "i32"}
    plain = {"SWIGLU": False, "STORE_ACTIVATION": False, "NORM": False}
    swiglu = {"SWIGLU": True, "STORE_ACTIVATION": False, "NORM": False}
    norm = {"SWIGLU": False, "STORE_ACTIVATION": False, "NORM": True}
    builds = {
        "row quantizer": build_sm90(
            quantize_rows._quantize_rows_kernel, rows | {"fp8_ptr": "*u8", "codes_ptr": "*u8"},
            {"K": 4096, "HAS_CLAMP": False, "R": 1, "BLOCK": 4096, "BY_ROUNDING": True, "HARDWARE_CAST": True} | plain,
            num_warps=quantize_rows.row_warps(4096),
        ),
        "inline OCC operand": build_sm90(
            quantize_rows._quantize_rows_inline_kernel, rows | {"out_ptr": "*u8"},
            {"K": 4096, "R": 1, "BLOCK": 4096, "HARDWARE_CAST": True} | plain, num_warps=quantize_rows.row_warps(4096),
        ),
        "row quantizer from the SwiGLU pre-activation (7B fc2)": build_sm90(
            quantize_rows._quantize_rows_kernel, rows | {"fp8_ptr": "*u8", "codes_ptr": "*u8"},
            {"K": 11008, "HAS_CLAMP": False, "R": 1, "BLOCK": 16384, "BY_ROUNDING": True, "HARDWARE_CAST": True} | swiglu,
            num_warps=quantize_rows.row_warps(11008),
        ),
        "inline OCC operand from the SwiGLU pre-activation (7B fc2)": build_sm90(
            quantize_rows._quantize_rows_inline_kernel, rows | {"out_ptr": "*u8"},
            {"K": 11008, "R": 1, "BLOCK": 16384, "HARDWARE_CAST": True} | swiglu, num_warps=quantize_rows.row_warps(11008),
        ),
        "inline OCC operand of the RMSNorm (7B qkv / fc1 input)": build_sm90(
            quantize_rows._quantize_rows_inline_kernel, rows | {"out_ptr": "*u8"},
            {"K": 4096, "R": 1, "BLOCK": 4096, "HARDWARE_CAST": True} | norm, num_warps=quantize_rows.row_warps(4096),
        ),
    }
    recipe_signature = {"x_ptr": "*bf16", "rht_ptr": "*fp32", "seed_ptr": "*i64", "global_scale_ptr": "*fp32", "codes_ptr": "*u8", "scale_ptr": "*u8",
                        "values_ptr": "*bf16", "M": "i32", "N": "i32", "stride_x": "i32"}
    # the recipe kernel's production layouts (nvfp4's dY^T, X^T, dY, W; the operands the GEMM takes at
    # once as BF16 values alone, the kept ones as codes), compiled as launched: hardware FP8 scales,
    # stochastic rounding in directed fp32 arithmetic
    for name, along, rht, tiles, stochastic, values, codes in (
        ("NVFP4 along the tokens, RHT on tensor cores, SR, BF16 values alone", True, 2, False, True, True, False),
        ("NVFP4 along the tokens, RHT on tensor cores", True, 2, False, False, False, True),
        ("NVFP4 1x16 rows, SR, BF16 values alone", False, 0, False, True, True, False),
        ("NVFP4 16x16 tiles, BF16 values", False, 0, True, False, True, True),
    ):
        rows, cols, warps = quantize_nvfp4.default_tile(along, rht > 0, stochastic, tiles, False)
        builds[name] = build_sm90(
            quantize_nvfp4._quantize_kernel, recipe_signature,
            {"ALONG_TOKENS": along, "RHT": rht, "TILES": tiles, "STOCHASTIC": stochastic, "BR": rows, "BC": cols, "MX": False, "VALUES": values, "EVEN": True,
             "CODES": codes, "DIRECTED": quantize_nvfp4.DIRECTED_SR, "HARDWARE_CAST": True},
            num_warps=warps,
        )
    pair_signature = {"x_ptr": "*bf16", "signs_ptr": "*fp32", "seed_ptr": "*i64", "global_scale_ptr": "*fp32", "codes_ptr": "*u8", "scale_ptr": "*u8",
                      "values_ptr": "*i32", "M": "i32", "N": "i32", "stride_x": "i32"}
    for (rht, stochastic, mx), (tokens, columns, warps) in quantize_tokens.TILE_BY_LAYOUT.items():
        for values in (False, True) if mx and not rht and not stochastic else (False,):  # mxfp4's dY^T takes the BF16 operand
            name = f"token pairs, {'MXFP4' if mx else 'NVFP4'}{', RHT' if rht else ''}{', SR' if stochastic else ''}{', BF16 values alone' if values else ''}"
            builds[name] = build_sm90(
                quantize_tokens._quantize_kernel, pair_signature,
                {"RHT": rht, "STOCHASTIC": stochastic, "MX": mx, "BT": tokens, "BC": columns, "VALUES": values, "CODES": not values,
                 "HARDWARE_CAST": True, "DIRECTED": quantize_nvfp4.DIRECTED_SR},
                num_warps=warps,
            )
    for out, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        config = block_gemm.default_config(dtype)
        bm, bn, bk = config.block_m, config.block_n, config.block_k
        for b_kn in (False, True):
            builds[f"block GEMM, {out} output{', B read transposed' if b_kn else ''}"] = build_sm90(
                block_gemm._bf16_gemm_persistent_kernel if config.persistent else block_gemm._bf16_gemm_tma_kernel,
                {"a_desc": f"tensordesc<bf16[{bm},{bk}]>", "b_desc": f"tensordesc<bf16[{bk},{bn}]>" if b_kn else f"tensordesc<bf16[{bn},{bk}]>",
                 "c_desc": f"tensordesc<{out}[{bm},{bn}]>", "global_scale": "*fp32", "M": "i32", "N": "i32", "K": "i32"},
                {"B_KN": b_kn, "BM": bm, "BN": bn, "BK": bk, "GROUP_M": config.group_m, "AS_BF16": True}
                | ({"PROGRAMS": 132, "WARP_SPECIALIZE": config.warp_specialize} if config.persistent else {}),
                num_warps=config.num_warps, num_stages=config.num_stages,
            )
    return builds


def main() -> None:
    """Print the standard builds as JSON (name -> registers, stack, shared memory, instructions,
    whether the hardware FP8 conversion / tensor-core instructions occur)."""
    import json

    summary = {
        name: {"registers": build.registers, "stack_bytes": build.stack_bytes, "shared_bytes": build.shared_bytes,
               "instructions": build.instructions, "uses": {op: build.uses(op) for op in ("F2FP", "HMMA", "HGMMA")}}
        for name, build in standard_builds().items()
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
