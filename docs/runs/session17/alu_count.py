"""ALU-pipe (integer / logic / compare / select) SASS instructions per element of the recipe
kernel's production layouts, built for sm90 with the device's Triton (put /tmp/t36 first):
the measure session 16's ncu reading tied these kernels' time to (benchmarks/NOTES.md)."""
import sys

sys.path.insert(0, "/tmp/t36")
from megatron_fp4.kernels import quantize_nvfp4  # noqa: E402
from megatron_fp4.kernels.sm90_build import build_sm90  # noqa: E402

ALU = {"LOP3", "SHF", "ISETP", "SEL", "VIMNMX", "IMNMX", "FMNMX", "PRMT", "LEA", "IADD3", "FSETP", "FSEL", "PLOP3", "P2R", "SGXT", "MOV", "VIADD", "LOP", "IABS", "BMSK"}
FMA = {"FFMA", "FMUL", "FADD", "IMAD", "HFMA2", "HMUL2", "HADD2", "FMNMX2"}
XU = {"F2I", "I2F", "MUFU", "F2F", "F2FP", "I2FP", "FRND"}
SIGNATURE = {"x_ptr": "*bf16", "rht_ptr": "*fp32", "seed_ptr": "*i64", "global_scale_ptr": "*fp32", "codes_ptr": "*u8", "scale_ptr": "*u8",
             "values_ptr": "*bf16", "M": "i32", "N": "i32", "stride_x": "i32"}


def report(name, along, rht, tiles, stochastic, values, mx=False, extra=None):
    rows, cols, warps = quantize_nvfp4.default_tile(along, rht > 0, stochastic, tiles, mx)
    constexprs = {"ALONG_TOKENS": along, "RHT": rht, "TILES": tiles, "STOCHASTIC": stochastic, "BR": rows, "BC": cols, "MX": mx, "VALUES": values, "EVEN": True}
    constexprs |= extra or {}
    names = quantize_nvfp4._quantize_kernel.arg_names
    constexprs = {k: v for k, v in constexprs.items() if k in names}
    build = build_sm90(quantize_nvfp4._quantize_kernel, SIGNATURE, constexprs, num_warps=warps)
    per_thread = rows * cols / (32 * warps)
    alu = sum(n for op, n in build.opcodes.items() if op in ALU) / per_thread
    fma = sum(n for op, n in build.opcodes.items() if op in FMA) / per_thread
    xu = sum(n for op, n in build.opcodes.items() if op in XU) / per_thread
    top = ", ".join(f"{op} {n / per_thread:.1f}" for op, n in build.opcodes.most_common(12))
    print(f"| {name} | {build.registers} | {alu:.1f} | {fma:.1f} | {xu:.1f} | {build.instructions / per_thread:.1f} | {top} |", flush=True)


if __name__ == "__main__":
    extra = dict(arg.split("=") for arg in sys.argv[1:])
    extra = {k: (v == "1") if v in ("0", "1") else int(v) for k, v in extra.items()}
    print("| layout | regs | ALU/elem | FMA/elem | XU/elem | all/elem | top opcodes per element |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    report("NVFP4 1x16 rows RTN", False, 0, False, False, False, extra=extra)
    report("NVFP4 1x16 rows RTN, values", False, 0, False, False, True, extra=extra)
    report("NVFP4 1x16 rows SR, values", False, 0, False, True, True, extra=extra)
    report("NVFP4 tokens RHT RTN", True, 2, False, False, False, extra=extra)
    report("NVFP4 tokens RHT SR, values", True, 2, False, True, True, extra=extra)
    report("NVFP4 16x16 tiles, values", False, 0, True, False, True, extra=extra)
