# megatron-fp4 on NVIDIA's PyTorch container: CUDA, cuDNN, NCCL, PyTorch, Triton, Transformer
# Engine and apex come with the base image; this adds megatron-core, megatron-fp4 and a patched
# Megatron-LM (/opt/megatron-lm).
#   docker build -t megatron-fp4 .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#     -v /data:/data -v /checkpoints:/checkpoints megatron-fp4 \
#     bash examples/pretrain_gpt.sh --fp4 ...        (see README: "Docker and Slurm")
# The tag is pinned (its PyTorch/TE versions are tested together); 25.04 ships Python 3.12.
FROM nvcr.io/nvidia/pytorch:25.04-py3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1

WORKDIR /opt/megatron-fp4

# Dependencies first (a layer that survives code changes). --no-deps for the package itself:
# its "torch>=2.6" must not replace the image's own PyTorch build.
RUN pip install --no-cache-dir \
        megatron-core==0.16.1 \
        tokenizers==0.23.3 \
        tensorboard==2.21.0 \
        matplotlib==3.11.2 \
        psutil==7.2.2

COPY pyproject.toml README.md ./
COPY megatron_fp4 ./megatron_fp4
COPY tools ./tools
COPY examples ./examples
COPY scripts ./scripts
COPY patches ./patches
RUN pip install --no-cache-dir --no-deps -e .

# Megatron-LM's own pretrain_gpt.py (its full training loop) at the pinned tag, with megatron-fp4's
# patch series applied. examples/pretrain_gpt.sh uses it when MEGATRON_LM_DIR=/opt/megatron-lm is
# set (docker run -e MEGATRON_LM_DIR=/opt/megatron-lm ...), megatron-fp4's trainer otherwise.
RUN pip install --no-cache-dir six==1.17.0 pyyaml==6.0.4 pydantic==2.14.4 \
 && python -m megatron_fp4.megatron_lm.checkout --dir /opt/megatron-lm --clone

WORKDIR /workspace
CMD ["bash"]
