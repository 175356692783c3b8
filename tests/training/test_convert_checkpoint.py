"""tools/convert_checkpoint.py: export to Hugging Face (logits equal in transformers), import back
(bit-identical weights), TP=2 checkpoints, packed FP4, and bad inputs."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from megatron_fp4.tools import convert_checkpoint as convert
from megatron_fp4.tools.fp4_checkpoint import load_packed

from conftest import relative_error

from .test_pretrain import _tp2_worker, argv, free_port, run

transformers = pytest.importorskip("transformers")
MODEL = "--fp4 --hidden-dropout 0 --attention-dropout 0 --group-query-attention --num-query-groups 2"


def our_logits(checkpoint: str, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of our model (FP4 off: the exported network is the unquantized one)."""
    with convert._Single():
        args, model, tokenizer = convert.load_megatron(checkpoint, [])
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        with torch.no_grad():
            logits = model(tokens, positions, None)
    return logits[..., : tokenizer.vocab_size].float()


def hf_logits(directory: str, tokens: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(directory, torch_dtype=torch.float32, local_files_only=True) if state is None else None
    if state is not None:
        config = transformers.LlamaConfig.from_pretrained(directory, local_files_only=True)
        model = transformers.LlamaForCausalLM(config)
        model.load_state_dict(state, strict=False)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    run(corpus, f"{MODEL} --train-iters 4 --save {root / 'ckpt'}")
    return str(root / "ckpt")


def test_export_loads_in_transformers_with_the_same_logits(trained, tmp_path):
    convert.main(["export", "--load", trained, "--output", str(tmp_path / "hf")])
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(tmp_path / "hf"))
    tokens = torch.randint(0, 300, (2, 24))
    # fp32 on both sides; the attention and matmul kernels differ: fp32 accumulation error only
    assert relative_error(hf_logits(str(tmp_path / "hf"), tokens), our_logits(trained, tokens)) < 1e-5


def test_import_gives_back_bit_identical_weights(trained, tmp_path, corpus):
    convert.main(["export", "--load", trained, "--output", str(tmp_path / "hf"), "--max-shard-bytes", "200000"])
    assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")  # sharded
    convert.main(["import", "--hf", str(tmp_path / "hf"), "--save", str(tmp_path / "imported"), "--tokenizer-model", corpus[1]])
    convert.main(["export", "--load", str(tmp_path / "imported"), "--output", str(tmp_path / "again")])
    first, second = convert.read_safetensors(str(tmp_path / "hf")), convert.read_safetensors(str(tmp_path / "again"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # and the trainer continues from it (weights only, iteration 0) with the import's padded vocabulary
    records = run(corpus, f"{MODEL} --train-iters 3 --load {tmp_path / 'imported'} --finetune --vocab-size 1024 --save {tmp_path / 'tuned'}")
    assert [r["iteration"] for r in records] == [1, 2, 3]


def test_tp2_checkpoint_exports_at_tp1(corpus, tmp_path):
    flags = argv(corpus, f"{MODEL} --train-iters 3 --tensor-model-parallel-size 2 --sequence-parallel --save {tmp_path / 'tp2'}")
    mp.spawn(_tp2_worker, args=(free_port(), flags, str(tmp_path)), nprocs=2, join=True)
    convert.main(["export", "--load", str(tmp_path / "tp2"), "--output", str(tmp_path / "hf")])
    tokens = torch.randint(0, 300, (1, 16))
    assert relative_error(hf_logits(str(tmp_path / "hf"), tokens), our_logits(str(tmp_path / "tp2"), tokens)) < 1e-5


def test_fp4_packed_export_and_loader(trained, tmp_path):
    convert.main(["export", "--load", trained, "--output", str(tmp_path / "fp4"), "--fp4-packed"])
    config = json.loads((tmp_path / "fp4" / "config.json").read_text())
    assert config["megatron_fp4"]["format"] == "megatron-fp4-packed" and config["megatron_fp4"]["granularity"] == "row"
    stored = convert.read_safetensors(str(tmp_path / "fp4"))
    state = load_packed(str(tmp_path / "fp4"))
    convert.main(["export", "--load", trained, "--output", str(tmp_path / "hf")])
    exact = convert.read_safetensors(str(tmp_path / "hf"))
    n, k = exact["model.layers.0.mlp.up_proj.weight"].shape
    codes, scale = stored["model.layers.0.mlp.up_proj.weight.fp4_codes"], stored["model.layers.0.mlp.up_proj.weight.fp4_scale"]
    assert codes.dtype == torch.uint8 and codes.shape == (n, k // 2) and scale.shape == (n, 1)
    assert "model.layers.0.mlp.up_proj.weight" not in stored  # packed, not stored twice
    from megatron_fp4.quantize import QuantSpec, fake_quantize

    for name, weight in exact.items():
        if name in config["megatron_fp4"]["linear_weights"]:
            assert torch.equal(state[name], fake_quantize(weight, QuantSpec("fp4", "row")))
        else:
            assert torch.equal(state[name], weight)
    tokens = torch.randint(0, 300, (1, 16))
    packed_logits = hf_logits(str(tmp_path / "fp4"), tokens, state)
    assert 0 < relative_error(packed_logits, hf_logits(str(tmp_path / "hf"), tokens)) < 0.5  # FP4 weights: close, not equal


def test_bad_inputs_fail_clearly_and_never_overwrite(trained, tmp_path, corpus):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit, match="exists and is not empty; pass --force"):
        convert.main(["export", "--load", trained, "--output", str(tmp_path / "taken")])
    assert (tmp_path / "taken" / "keep.txt").read_text() == "precious"
    with pytest.raises(SystemExit, match="no finished checkpoint"):
        convert.main(["export", "--load", str(tmp_path / "nothing"), "--output", str(tmp_path / "o1")])
    with pytest.raises(SystemExit, match="does not match the model flags"):
        convert.main(["export", "--load", trained, "--output", str(tmp_path / "o2"), "--", "--num-layers", "3"])
    with pytest.raises(SystemExit, match="no config.json"):
        convert.main(["import", "--hf", str(tmp_path / "nothing"), "--save", str(tmp_path / "o3"), "--tokenizer-model", corpus[1]])
    convert.main(["export", "--load", trained, "--output", str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu", "attention_bias": True}))
    with pytest.raises(SystemExit, match=r"unsupported config.json options \['hidden_act', 'attention_bias'\]"):
        convert.main(["import", "--hf", str(tmp_path / "hf"), "--save", str(tmp_path / "o4"), "--tokenizer-model", corpus[1]])


def test_tied_embeddings_round_trip(trained, tmp_path, corpus):
    """An HF model with tied embeddings imports (no lm_head tensor) and exports with the same logits."""
    convert.main(["export", "--load", trained, "--output", str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    from safetensors.torch import save_file

    tensors = convert.read_safetensors(str(tmp_path / "hf"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"))
    convert.main(["import", "--hf", str(tmp_path / "hf"), "--save", str(tmp_path / "tied"), "--tokenizer-model", corpus[1]])
    convert.main(["export", "--load", str(tmp_path / "tied"), "--output", str(tmp_path / "again")])
    assert json.loads((tmp_path / "again" / "config.json").read_text())["tie_word_embeddings"] is True
    tokens = torch.randint(0, 300, (1, 16))
    assert relative_error(hf_logits(str(tmp_path / "again"), tokens), our_logits(str(tmp_path / "tied"), tokens)) < 1e-5
    assert relative_error(hf_logits(str(tmp_path / "again"), tokens), hf_logits(str(tmp_path / "hf"), tokens)) < 1e-6
