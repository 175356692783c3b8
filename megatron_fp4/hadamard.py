"""Random Hadamard transform (RHT) along a GEMM's reduction dimension, in blocks of 16.

NVIDIA's NVFP4 training recipe (arXiv 2509.25149, §4) multiplies both inputs of the
weight-gradient GEMM dW = dY^T X by the same orthogonal matrix R along the token dimension M
(the reduction), block-diagonal with 16x16 blocks R_16 = H_16 diag(s) / 4: H_16 the Sylvester
Hadamard matrix, s a fixed vector of random signs. Since R^T R = I, (R dY)^T (R X) = dY^T X in
exact arithmetic; what changes is the distribution each 16-block is quantized from: outliers are
spread over the block, so the block scales fit the values better.

``hadamard_seed`` fixes the signs (one vector for the whole run: the transform is the same for
every layer and step, as the recipe describes); ``None`` uses no sign flips (plain Hadamard).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["RHT_BLOCK", "hadamard_matrix", "rht_matrix", "rht_signs", "apply_rht"]

RHT_BLOCK = 16


def hadamard_matrix(size: int) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix of ``size`` (a power of two), fp32: H H^T = I."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"hadamard_matrix: size {size} is not a power of two")
    matrix = torch.ones(1, 1)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix / size**0.5


@functools.lru_cache(maxsize=16)
def _signs_cpu(size: int, seed: int | None) -> torch.Tensor:
    signs = torch.ones(size)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        signs = torch.where(torch.rand(size, generator=generator) < 0.5, -1.0, 1.0)
    return signs


@functools.lru_cache(maxsize=16)
def _rht_cpu(size: int, seed: int | None) -> torch.Tensor:
    return hadamard_matrix(size) * _signs_cpu(size, seed).reshape(1, -1)  # H diag(s)


_ON_DEVICE: dict[tuple[str, int, int | None, torch.device], torch.Tensor] = {}


def _shared(kind: str, make, size: int, seed: int | None, device) -> torch.Tensor:
    """``make(size, seed)`` on ``device``, copied there once per (size, seed, device), not per call
    (a host-to-device copy per quantization was a host synchronisation in every NVFP4 linear)."""
    device = torch.device(device or "cpu")
    if device.type == "cpu":
        return make(size, seed)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (kind, size, seed, device)
    found = _ON_DEVICE.get(key)
    if found is None:
        found = make(size, seed).to(device)
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _ON_DEVICE[key] = found
    return found


def rht_matrix(seed: int | None, size: int = RHT_BLOCK, device=None) -> torch.Tensor:
    """R = H diag(s) for the given sign seed (orthogonal: R R^T = R^T R = I); shared and
    read-only."""
    return _shared("matrix", _rht_cpu, size, seed, device)


def rht_signs(seed: int | None, size: int = RHT_BLOCK, device=None) -> torch.Tensor:
    """The signs s (fp32 +-1 [size]) of ``rht_matrix(seed)`` = H diag(s): what a fast Walsh-
    Hadamard transform needs instead of the matrix; shared and read-only."""
    return _shared("signs", _signs_cpu, size, seed, device)


def apply_rht(x2d: torch.Tensor, seed: int | None, what: str = "tensor", inverse: bool = False) -> torch.Tensor:
    """Blocks of 16 rows of ``x2d`` [M, C] multiplied by R (or R^T with ``inverse``), in fp32.

    The transform runs along dim 0 (the tokens: wgrad's reduction dimension). ``what`` names the
    operand in the error for an M that 16 does not divide."""
    rows, columns = x2d.shape
    if rows % RHT_BLOCK:
        raise ValueError(
            f"{what}: the random Hadamard transform needs the token dimension in blocks of {RHT_BLOCK}, got {rows} "
            f"(--micro-batch-size x --seq-length must be a multiple of {RHT_BLOCK}, or pass --no-fp4-rht)"
        )
    matrix = rht_matrix(seed, device=x2d.device)
    if inverse:
        matrix = matrix.t()
    blocks = x2d.float().reshape(rows // RHT_BLOCK, RHT_BLOCK, columns)
    return torch.matmul(matrix, blocks).reshape(rows, columns)
