"""Run inside a patched Megatron-LM tree (subprocesses of test_patches.py): upstream's own argument
parsing and model builder with megatron-fp4's hooks. Prints one JSON line with what it saw."""

import json
import os
import sys
from functools import partial

tree, job, *flags = sys.argv[1:]
sys.path.insert(0, tree)
os.environ.setdefault("WORLD_SIZE", "1")
os.environ.setdefault("RANK", "0")
os.environ.setdefault("LOCAL_RANK", "0")

import io  # noqa: E402

import torch  # noqa: E402

import megatron_fp4.megatron_lm as hooks  # noqa: E402
from megatron.training.arguments import parse_args, validate_args  # noqa: E402


def parse(argv: list[str]):
    """(args, what the hooks made of them) for one command line, or (None, {"error": ...})."""
    sys.argv = ["pretrain_gpt.py", *argv]
    try:
        args = parse_args(partial(hooks.add_arguments, chained=None))
        validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})
    except (ValueError, AssertionError) as error:
        return None, {"error": str(error)}
    recipe = hooks.recipe_from_args(args)
    # upstream pickles args into every checkpoint and reads it back with weights_only=True
    buffer = io.BytesIO()
    torch.save({"args": args}, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
    return args, {"recipe": recipe.name if recipe else None, "fp4": args.fp4, "bf16_layers": list(args.megatron_fp4_bf16_layers),
                  "dge_k": recipe.dge.k if recipe else None, "occ": recipe.occ.enabled if recipe else None,
                  "record": args.megatron_fp4_recipe_record}


if job == "parse-many":  # flags: a JSON file holding a list of command lines (upstream's import once, not per case)
    with open(flags[0]) as cases:
        print(json.dumps([parse(argv)[1] for argv in json.load(cases)]))
    raise SystemExit(0)
args, result = parse(flags)
if args is None:
    print(json.dumps(result))
    raise SystemExit(0)
if job == "build":
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.training.global_vars import set_args

    from megatron_fp4.megatron import enable_cpu_runtime

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    enable_cpu_runtime()
    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(1234)
    set_args(args)
    args.padded_vocab_size = 512  # what building the NullTokenizer would set (501 ids padded to 128)
    from gpt_builders import gpt_builder

    model = gpt_builder(args, True, True)
    result["layers"] = {
        name: [type(module).__name__, getattr(getattr(module, "fp4_recipe", None), "name", None), getattr(module, "fp4_name", None)]
        for name, module in model.named_modules() if name.endswith(("linear_qkv", "linear_fc2", "core_attention"))
    }
    dist.destroy_process_group()
print(json.dumps(result))
