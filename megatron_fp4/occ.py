"""Outlier Clamping and Compensation (OCC) for activations (paper §3.2, Eq. 8-9).

Clamp: a few large activations make the absmax scale so coarse that most of the row flushes to
zero. OCC clamps A to quantile thresholds before quantization: by default the paper's two-sided
rule ``clamp(A, min=q_{1-α}(A), max=q_α(A))``, or symmetrically to ``±q_α(|A|)``.

Compensate: the residual ΔA = A - clamp(A) is sparse (about 2(1-α) of the entries), so the GEMM
``Y = Q(clamp(A)) Q(W)^T + ΔA W^T`` adds back what clamping removed in high precision. Two ways:

- ``exact`` (``SparseResidual``): every clamped entry. Exact, but at α = 0.99 the outliers of
  real and synthetic activations touch nearly every channel, so the product is a dense 16-bit
  GEMM (or a sparse one that is slower still): measured 4-8x the FP4 GEMM on an H100.
- ``hot_channels`` (``HotChannelResidual``): the residual of the ``hot_channel_fraction`` of
  channels that hold most of the clamped energy (sum of ΔA² per column), chosen per call on the
  device, compensated exactly with a [rows, C] x [C, N] 16-bit GEMM; outliers in the other
  channels are clamped without compensation (what the authors' released runs do everywhere).
  LLM outliers concentrate in a few persistent channels (SwiGLU outputs, attention projections),
  which is what makes this cheap and close. Fixed shapes, no host synchronisation.
- ``fp8`` (``FP8Residual``): every clamped entry, the dense residual stored as FP8 E4M3 with one
  scale per token (one fused kernel, no ``nonzero``), multiplied by the weight's E4M3 form (one
  scale per output channel, quantized once per step) on FP8 tensor cores: one FP8 GEMM in the
  forward, one 16-bit GEMM in the weight gradient, instead of the exact path's four 16-bit GEMMs.
  Compensation error: E4M3 rounding (2^-4 relative) of ΔA and of W, on the ~2% clamped term.
- ``inline`` (``quantize_with_inline_outliers``): every clamped entry, carried inside the GEMM
  operand itself. On Hopper the FP4 activation already enters its GEMMs as FP8 E4M3 elements
  (every E2M1 value is exact in E4M3), so the operand holds E2M1(clamp(A) / s) everywhere except
  at the clamped entries, which hold E4M3(A / s), their true value to 2^-4 relative. Y = diag(s)
  O Q(W)^T and dW = Q8(diag(s) dY)^T O then compensate the forward and the weight gradient with
  no extra GEMM, no residual and 1 B per activation element kept for backward. What differs from
  the paper's ΔA W^T: the clamped entries meet the FP4 weight Q(W) (as every other entry does)
  instead of W, an extra error ΔA (W - Q(W))^T whose share of the output error is bounded by
  ΔA's share of A's energy (a few %; ``fidelity.gemm_output_ablation``), and an outlier more
  than 448/6 ≈ 75x above the clamped row maximum widens that row's scale to amax / 448 rather
  than saturating. Native FP4 GEMMs (Blackwell) cannot carry E4M3 entries: there it runs on FP8.

Quantiles: exact order statistics (``torch.kthvalue``, a selection, not a sort) up to
``exact_max_elements``; beyond that, the same order statistic of a uniform random sample of
``sample_size`` elements drawn with a fixed-seed generator (deterministic, and it does not touch
the global RNG). The sampled threshold's rank error is binomial: its standard deviation is
sqrt(α(1-α)/sample_size) in quantile units (≈2e-4 at α=0.99 with 2^18 samples); tests bound it.
On CUDA, tensor-scope bounds of 16-bit activations come from ``kernels.order_statistics`` (radix
selection in two launches, the sample gathered and a fused RMSNorm input normalised there; the
same values as the sort here, which stays the reference and the CPU path).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = [
    "OCCConfig",
    "occ_sample_positions",
    "occ_bounds_of_sample",
    "stacked_bounds",
    "occ_norm_bounds_on_device",
    "SparseResidual",
    "HotChannelResidual",
    "FP8Residual",
    "occ_fp8_residual",
    "quantize_with_inline_outliers",
    "quantize_with_inline_outliers_reference",
    "occ_hot_channel_residual",
    "occ_compensation_residual",
    "OCCResult",
    "quantile_order_statistic",
    "occ_thresholds",
    "occ_bounds",
    "occ_residual",
    "clamp_to",
    "occ_clamp",
]

SAMPLE_SEED = 0x0CC
COMPENSATIONS = ("exact", "hot_channels", "fp8", "inline")
E4M3_MAX = 448.0


@dataclass(frozen=True)
class OCCConfig:
    """Outlier clamping settings.

    alpha: quantile kept unclamped (paper default 0.99; ablated at 0.999 and 0.97).
    compensate: add back ΔA·W^T through the sparse high-precision GEMM.
    scope: ``tensor`` (one threshold pair for the whole activation, as in the paper's equation)
    or ``row`` (per token, as the authors' code does).
    symmetric: clamp to ±q_α(|A|) instead of the two-sided signed quantiles.
    compensation: ``inline`` (the default: every clamped entry as E4M3 inside the FP8 GEMM
    operand, no extra GEMM; final validation loss within 0.3% of ``exact`` at two seeds whose
    spread is 3.3%, benchmarks/NOTES.md session 6), ``fp8`` (every clamped entry, as an E4M3
    residual through its own FP8 GEMM), ``exact`` (every clamped entry, the paper's
    high-precision sparse product) or ``hot_channels`` (the channels holding most of the clamped
    energy); see the module docstring.
    hot_channel_fraction: share of the K channels compensated with ``hot_channels`` (at least one).
    compensate_wgrad: also add the residual's term dY^T ΔA to the weight gradient (the exact
    derivative of the compensated forward; the default, and the only choice with ``inline``).
    False compensates the forward only: the weight gradient then sees the clamped, quantized
    activation, as in the authors' released code (which clamps without compensating), the
    residual is not kept for backward (0.66 B instead of 1.5 B per activation element with
    ``fp8``) and wgrad's extra 16-bit GEMM disappears.
    """

    enabled: bool = True
    alpha: float = 0.99
    compensate: bool = True
    scope: str = "tensor"
    symmetric: bool = False
    exact_max_elements: int = 1 << 22
    sample_size: int = 1 << 18
    compensation: str = "inline"
    hot_channel_fraction: float = 1 / 32
    compensate_wgrad: bool = True

    def __post_init__(self) -> None:
        if not 0.5 < self.alpha < 1.0:
            raise ValueError(f"OCCConfig.alpha={self.alpha}; must be in (0.5, 1), e.g. 0.99")
        if self.compensation not in COMPENSATIONS:
            raise ValueError(f"OCCConfig.compensation={self.compensation!r}; allowed: {list(COMPENSATIONS)}")
        if not 0.0 < self.hot_channel_fraction <= 1.0:
            raise ValueError(f"OCCConfig.hot_channel_fraction={self.hot_channel_fraction}; must be in (0, 1]")
        if self.scope not in ("tensor", "row"):
            raise ValueError(f"OCCConfig.scope={self.scope!r}; allowed: ['tensor', 'row']")
        if self.inline and not self.compensate_wgrad:
            raise ValueError(
                "OCCConfig.compensation='inline' carries the clamped entries inside the activation operand that the "
                "weight gradient reuses, so it always compensates both; compensate_wgrad=False "
                "(--no-fp4-occ-wgrad-compensation) needs compensation 'fp8', 'exact' or 'hot_channels'"
            )
        if self.exact_max_elements < 1 or self.sample_size < 1:
            raise ValueError(
                f"OCCConfig.exact_max_elements={self.exact_max_elements} and sample_size="
                f"{self.sample_size} must be positive"
            )

    @property
    def inline(self) -> bool:
        """Whether the clamped entries travel inside the GEMM operand (``inline`` compensation)."""
        return self.enabled and self.compensate and self.compensation == "inline"

    @property
    def residual_compensation(self) -> bool:
        """Whether a separate residual ΔA is formed and multiplied (``exact``, ``hot_channels``, ``fp8``)."""
        return self.enabled and self.compensate and self.compensation != "inline"


def _rank(count: int, quantile: float) -> int:
    """1-based rank of the ``quantile`` order statistic among ``count`` values (inverted CDF)."""
    return min(max(math.ceil(quantile * count), 1), count)


@functools.lru_cache(maxsize=64)
def _sample_index(count: int, sample_size: int, device: torch.device) -> torch.Tensor:
    """The fixed-seed sample positions for a tensor of ``count`` elements, drawn once per
    (count, size, device) and reused: no generator work per call, and nothing random happens
    inside a CUDA-graph capture."""
    generator = torch.Generator(device=device).manual_seed(SAMPLE_SEED)
    return torch.randint(0, count, (sample_size,), generator=generator, device=device)


def occ_sample_positions(count: int, config: OCCConfig, device: torch.device) -> torch.Tensor | None:
    """The flat positions tensor-scope quantiles are taken at for a tensor of ``count`` elements:
    the fixed-seed sample, or None (all elements) up to ``exact_max_elements``."""
    return _sample_index(count, config.sample_size, device) if count > config.exact_max_elements else None


def _quantile_source(values: torch.Tensor, config: OCCConfig) -> torch.Tensor:
    """The values the order statistics are taken over: all of them, or the fixed-seed sample."""
    flat = values.reshape(-1)
    positions = occ_sample_positions(flat.numel(), config, flat.device)
    return (flat if positions is None else flat[positions]).float()


def _order_statistics(source: torch.Tensor, quantiles: tuple[float, ...]) -> list[torch.Tensor]:
    """Several order statistics of one flat tensor: ``kthvalue`` for one, else one sort (on GPU a
    radix sort of the sample is far cheaper than repeated selections)."""
    count = source.numel()
    ranks = [_rank(count, q) for q in quantiles]
    if len(ranks) == 1:
        return [source.kthvalue(ranks[0]).values]
    ordered = torch.sort(source).values
    return [ordered[rank - 1] for rank in ranks]


def quantile_order_statistic(values: torch.Tensor, quantile: float, config: OCCConfig) -> torch.Tensor:
    """The ``quantile`` order statistic of a flat tensor: exact, or sampled past the size limit."""
    return _order_statistics(_quantile_source(values, config), (quantile,))[0]


def occ_thresholds(x2d: torch.Tensor, config: OCCConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) clamp bounds: scalars (tensor scope) or [rows, 1] (row scope)."""
    alpha = config.alpha
    if config.scope == "row":
        k = x2d.shape[-1]
        source = x2d.float().abs() if config.symmetric else x2d.float()
        high = source.kthvalue(_rank(k, alpha), dim=-1, keepdim=True).values
        low = -high if config.symmetric else source.kthvalue(_rank(k, 1 - alpha), dim=-1, keepdim=True).values
        return low, high
    return _tensor_thresholds(_quantile_source(x2d, config), config)


def _tensor_thresholds(source: torch.Tensor, config: OCCConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-scope (low, high) from the flat fp32 values they are taken over."""
    alpha = config.alpha
    if config.symmetric:  # |x| of the sample only (abs commutes with the gather): no pass over A
        high = _order_statistics(source.abs(), (alpha,))[0]
        return -high, high
    low, high = _order_statistics(source, (1 - alpha, alpha))  # one sample, one sort
    return low, high


def occ_bounds_of_sample(sample: torch.Tensor, config: OCCConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-scope clamp bounds in the sample's dtype from the values at ``occ_sample_positions``
    (or all values): what ``occ_bounds`` returns for the tensor they were taken from."""
    device = _device_bounds(sample.reshape(-1), None, config)
    if device is not None:
        return device
    low, high = _tensor_thresholds(sample.reshape(-1).float(), config)
    return low.to(sample.dtype), high.to(sample.dtype)


def _device_bounds(
    values: torch.Tensor, positions: torch.Tensor | None, config: OCCConfig, norm: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Tensor-scope bounds of the 16-bit CUDA ``values`` (at the flat ``positions``, if given; with
    ``norm`` = (weight, rstd), of RMSNorm(values) there) by the order-statistics kernels
    (``kernels.order_statistics``: two launches, equal as numbers to the sort), as two views of
    one [2] tensor (``stacked_bounds`` reuses it); None where the reference runs (CPU, fp32, row
    scope)."""
    if not (values.is_cuda and config.scope == "tensor"):
        return None
    from .kernels import triton_available

    if not triton_available():
        return None
    from .kernels.order_statistics import order_statistic_bounds, supports_order_statistics

    if not supports_order_statistics(values, norm):
        return None
    count = values.numel() if positions is None else positions.numel()
    bounds = order_statistic_bounds(values, _rank(count, 1 - config.alpha), _rank(count, config.alpha), config.symmetric, positions, norm)
    return bounds[0], bounds[1]


def occ_norm_bounds_on_device(
    x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, positions: torch.Tensor | None, config: OCCConfig,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """OCC's bounds of RMSNorm(x) at ``positions`` (or everywhere), computed and ranked on the
    device in two launches, or None where ``fused_inputs.rms_norm_occ_bounds`` computes them."""
    return _device_bounds(x2d, positions, config, (weight, rstd))


def stacked_bounds(bounds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(low, high) as one [2] tensor, the form the fused quantizers take: the [2] tensor the
    device bounds are views of (no launch), else a stack."""
    low, high = bounds
    base = getattr(low, "_base", None)
    if (
        base is not None and high._base is base and base.shape == (2,) and low.dim() == high.dim() == 0
        and low.storage_offset() == base.storage_offset() and high.storage_offset() == base.storage_offset() + 1
    ):
        return base
    return torch.stack([low.reshape(()), high.reshape(())])


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in fp32 (16-bit operands: exact products, no output rounding)."""
    if a.dtype in (torch.bfloat16, torch.float16) and a.is_cuda:
        return torch.mm(a, b.to(a.dtype), out_dtype=torch.float32)
    return a.float() @ b.float()


@dataclass(frozen=True)
class SparseResidual:
    """ΔA = A - clamp(A) in coordinate form: only the clamped entries, in fp32.

    flat_index: [nnz] row-major positions (int32 while rows*K < 2^31, else int64); values: [nnz]
    fp32; shape: (rows, K). 8 bytes per outlier, so about 0.16 bytes per element at α = 0.99.
    The products with a weight gather the few columns that hold outliers into a small dense GEMM
    when they are few (outliers cluster in channels in LLM activations), else use a sparse COO
    product.
    """

    flat_index: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    dense_column_fraction = 0.25  # gather columns while at most this share of K holds outliers
    # where they are spread: "dense" (two 16-bit GEMMs on the hi/lo split of ΔA), "csr" or "coo"
    # (torch.sparse); "auto": dense on CUDA, csr elsewhere (measured in benchmarks/bench_occ.py)
    sparse_format = "auto"

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def nbytes(self) -> int:
        return self.flat_index.numel() * self.flat_index.element_size() + self.values.numel() * 4

    @property
    def rows(self) -> torch.Tensor:
        return self.flat_index.long() // self.shape[1]

    @property
    def columns(self) -> torch.Tensor:
        return self.flat_index.long() % self.shape[1]

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=torch.float32, device=self.values.device)
        dense.view(-1)[self.flat_index.long()] = self.values
        return dense

    def _gathered_columns(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        columns, position = torch.unique(self.columns, return_inverse=True)
        if columns.numel() > self.dense_column_fraction * self.shape[1]:
            return None
        compact = torch.zeros(self.shape[0], columns.numel(), dtype=torch.float32, device=self.values.device)
        compact[self.rows, position] = self.values
        return columns, compact

    def _format(self) -> str:
        if self.sparse_format != "auto":
            return self.sparse_format
        return "dense" if self.values.is_cuda else "csr"

    def _dense_split(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """ΔA as dense GEMM operands in ``dtype``: for 16-bit dtypes hi + lo (hi = ΔA rounded, lo =
        the rest), which together hold ΔA to ~2^-16 relative; for fp32 ΔA itself."""
        if dtype not in (torch.bfloat16, torch.float16):
            return [self.to_dense()]
        hi_values = self.values.to(dtype)
        parts = []
        for values in (hi_values, (self.values - hi_values.float()).to(dtype)):
            dense = torch.zeros(self.shape, dtype=dtype, device=values.device)
            dense.view(-1)[self.flat_index.long()] = values
            parts.append(dense)
        return parts

    def _sparse(self, transpose: bool = False) -> torch.Tensor:
        """ΔA (or ΔA^T) as a torch sparse tensor in ``sparse_format``."""
        rows, columns, values = self.rows, self.columns, self.values
        shape = self.shape
        if transpose:
            rows, columns, shape = columns, rows, shape[::-1]
            if self._format() == "csr":  # CSR wants row-major order: sort by the new rows
                order = torch.argsort(rows * shape[1] + columns)
                rows, columns, values = rows[order], columns[order], values[order]
        if self._format() == "csr":
            counts = torch.bincount(rows, minlength=shape[0])
            crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=values.device)
            torch.cumsum(counts, 0, out=crow[1:])
            return torch.sparse_csr_tensor(crow, columns, values, shape, device=values.device, check_invariants=False)
        # positions come from nonzero(): in range and unique, so skip the invariant checks
        return torch.sparse_coo_tensor(
            torch.stack((rows, columns)), values, shape, device=values.device, check_invariants=False, is_coalesced=not transpose
        )

    def matmul_weight_t(self, weight: torch.Tensor) -> torch.Tensor:
        """ΔA @ W^T in fp32 ([rows, N]) for W [N, K]: the forward compensation term."""
        rows, n = self.shape[0], weight.shape[0]
        if self.nnz == 0:
            return torch.zeros(rows, n, dtype=torch.float32, device=weight.device)
        gathered = self._gathered_columns()
        if gathered is not None:
            columns, compact = gathered
            return compact @ weight.float()[:, columns].t()
        if self._format() == "dense":
            return sum(_matmul_fp32(part, weight.t()) for part in self._dense_split(weight.dtype))
        return torch.sparse.mm(self._sparse(), weight.float().t().contiguous())

    def t_matmul(self, grad: torch.Tensor) -> torch.Tensor:
        """grad^T @ ΔA in fp32 ([N, K]) for grad [rows, N]: the residual's weight-gradient term."""
        n, k = grad.shape[1], self.shape[1]
        out = torch.zeros(n, k, dtype=torch.float32, device=grad.device)
        if self.nnz == 0:
            return out
        gathered = self._gathered_columns()
        if gathered is not None:
            columns, compact = gathered
            out[:, columns] = grad.float().t() @ compact
            return out
        if self._format() == "dense":
            return sum(_matmul_fp32(grad.t(), part) for part in self._dense_split(grad.dtype))
        return torch.sparse.mm(self._sparse(transpose=True), grad.float()).t()

    def add_t_matmul_to(self, grad_weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """grad_weight += grad^T @ ΔA, in place (grad_weight fp32 [N, K])."""
        return grad_weight.add_(self.t_matmul(grad))


@dataclass(frozen=True)
class HotChannelResidual:
    """ΔA restricted to a fixed number of channels: ``columns`` [C] (int64) and their residual
    ``values`` [rows, C] in A's dtype (zero where nothing was clamped). Fixed shapes: no host sync.

    The products run in the operands' 16-bit dtype with fp32 accumulation and are added straight
    into the FP4 GEMM's output (a GEMM epilogue): ΔA in bf16 carries 2^-9 relative rounding per
    value, far below the E2M1 rounding (up to 2^-2) of the clamped part it sits next to."""

    columns: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        """Non-zero residual entries (a host sync: health statistics only)."""
        return int(torch.count_nonzero(self.values))

    @property
    def nbytes(self) -> int:
        return self.columns.numel() * self.columns.element_size() + self.values.numel() * self.values.element_size()

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=torch.float32, device=self.values.device)
        dense[:, self.columns] = self.values.float()
        return dense

    def matmul_weight_t(self, weight: torch.Tensor) -> torch.Tensor:
        """ΔA_hot @ W[:, hot]^T in fp32 ([rows, N])."""
        return self.values.float() @ weight.index_select(1, self.columns).float().t()

    def add_matmul_weight_t_to(self, out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """out += ΔA_hot @ W[:, hot]^T in place: the forward compensation, as one addmm on ``out``."""
        hot_weight_t = weight.index_select(1, self.columns).t().to(self.values.dtype)
        return torch.addmm(out, self.values.to(out.dtype), hot_weight_t.to(out.dtype), out=out)

    def t_matmul(self, grad: torch.Tensor) -> torch.Tensor:
        """grad^T @ ΔA in fp32 ([N, K], non-zero in the hot columns only): the weight-gradient term."""
        out = torch.zeros(grad.shape[1], self.shape[1], dtype=torch.float32, device=grad.device)
        return self.add_t_matmul_to(out, grad)

    def add_t_matmul_to(self, grad_weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """grad_weight[:, hot] += grad^T @ ΔA_hot, in place, in grad_weight's dtype."""
        product = grad.t().to(grad_weight.dtype) @ self.values.to(grad_weight.dtype)
        return grad_weight.index_add_(1, self.columns, product)


def occ_hot_channel_residual(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor, fraction: float) -> HotChannelResidual:
    """ΔA of the ``fraction`` of channels with the largest clamped energy (sum of ΔA² per column).

    Per-row bounds ([rows, 1]) and scalar bounds both work. Three passes over A (clamp, subtract,
    column norms) and a top-k over K; ΔA of the chosen columns is kept in A's dtype."""
    count = max(1, min(x2d.shape[1], round(fraction * x2d.shape[1])))
    excess = x2d - torch.clamp(x2d, min=low, max=high)
    energy = torch.linalg.vector_norm(excess, dim=0, dtype=torch.float32)
    columns = torch.topk(energy, count, sorted=False).indices
    return HotChannelResidual(columns, excess.index_select(1, columns), tuple(x2d.shape))


@dataclass(frozen=True)
class FP8Residual:
    """ΔA as FP8 E4M3 elements ``data`` [rows, K] with fp32 ``scale`` [rows, 1] (absmax / 448 per
    token): every clamped entry, 1 byte per element, fixed shapes (no host sync)."""

    data: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        """Non-zero residual entries (a host sync: health statistics only)."""
        return int(torch.count_nonzero(self.data.view(torch.uint8) & 0x7F))

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.scale.numel() * 4

    def to_dense(self) -> torch.Tensor:
        return self.data.float() * self.scale

    def matmul_weight_t(self, weight_fp8: tuple[torch.Tensor, torch.Tensor], tensor_cores: bool = True) -> torch.Tensor:
        """ΔA @ W^T in fp32 ([rows, N]) with W in its E4M3 row form (``fp8_rows(W)``): one FP8
        GEMM with both row scales in the epilogue on Hopper, else the dequantized product."""
        return self._product(weight_fp8, torch.float32, tensor_cores)

    def add_matmul_weight_t_to(self, out: torch.Tensor, weight_fp8: tuple[torch.Tensor, torch.Tensor], tensor_cores: bool = True) -> torch.Tensor:
        """out += ΔA @ W^T in place, the product written in ``out``'s dtype (no fp32 round trip).
        tensor_cores=False: the dequantized fp32 product (the reference backend's arithmetic)."""
        return out.add_(self._product(weight_fp8, out.dtype, tensor_cores))

    def _product(self, weight_fp8: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype, tensor_cores: bool) -> torch.Tensor:
        w_data, w_scale = weight_fp8
        aligned = all(d % 16 == 0 for d in (*self.data.shape, w_data.shape[0]))  # what _scaled_mm takes
        if tensor_cores and aligned and self.data.is_cuda and hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(self.data.device) >= (9, 0):
            from .gemm.hopper import rowwise_scaled_mm

            return rowwise_scaled_mm(self.data, w_data, self.scale, w_scale, dtype)
        return (self.to_dense() @ (w_data.float() * w_scale).t()).to(dtype)

    def add_t_matmul_to(self, grad_weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """grad_weight += grad^T @ ΔA in place: the token scales folded into grad, the E4M3
        elements exact in 16 bits; on CUDA one 16-bit GEMM accumulating into grad_weight in its
        epilogue (``addmm``), elsewhere in fp32."""
        if grad.is_cuda and grad.dtype in (torch.bfloat16, torch.float16) and grad_weight.dtype == grad.dtype:
            scaled = grad * self.scale.to(grad.dtype)
            return torch.addmm(grad_weight, scaled.t(), self.data.to(grad.dtype), out=grad_weight)
        scaled = grad.float() * self.scale
        return grad_weight.add_((scaled.t() @ self.data.float()).to(grad_weight.dtype))


def fp8_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 [rows, K], fp32 [rows, 1]) of a 2-D tensor, one absmax / 448 scale per row (the
    weight's form for the ``fp8`` compensation GEMM; NaN/Inf rows get a NaN scale). This is the
    reference; on CUDA one fused kernel (``kernels.occ_residual.fp8_rows_fused``, bit-exact)."""
    if tensor.is_cuda and tensor.dim() == 2 and tensor.dtype in (torch.bfloat16, torch.float16, torch.float32):
        from .kernels.occ_residual import fp8_rows_fused

        return fp8_rows_fused(tensor)
    return fp8_rows_reference(tensor)


def fp8_rows_reference(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch form of ``fp8_rows``."""
    from .quantize import encode_multiplier
    from .scaling import absmax_scale

    scale = absmax_scale(tensor.float().abs().amax(dim=-1, keepdim=True), 448.0)
    return (tensor.float() * encode_multiplier(scale)).to(torch.float8_e4m3fn), scale


def occ_fp8_residual(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> FP8Residual:
    """ΔA = A - clamp(A) as ``FP8Residual``: the fused kernel on CUDA (scalar bounds), else the
    reference (``megatron_fp4.kernels.occ_residual``)."""
    from .kernels.occ_residual import fp8_residual, fp8_residual_reference

    fused = x2d.is_cuda and low.numel() == 1 and high.numel() == 1
    data, scale = (fp8_residual if fused else fp8_residual_reference)(x2d, low, high)
    return FP8Residual(data, scale, tuple(x2d.shape))


def inline_outlier_scale(clamped_amax: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """The row scale of the ``inline`` operand: the clamped row's FP4 scale amax(clamp A) / 6,
    widened to amax(A) / 448 where an outlier would not fit E4M3 (more than ~75x above the clamped
    row maximum; the row's FP4 grid coarsens instead of the outlier saturating); NaN for a row
    holding NaN or Inf (it dequantizes to NaN: never a silent finite value)."""
    from .scaling import absmax_scale

    amax = amax.float()
    widened = amax / torch.full_like(amax, E4M3_MAX)  # tensor/tensor: true division (a scalar divides by its reciprocal on CUDA)
    scale = torch.maximum(absmax_scale(clamped_amax, 6.0), widened)
    return torch.where(torch.isfinite(amax), scale, torch.full_like(scale, float("nan")))


def quantize_with_inline_outliers_reference(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """The ``inline`` OCC operand (PyTorch reference): a ``QuantizedTensor`` whose E4M3 elements
    [rows, K] are E2M1(clamp(A) / s) inside [low, high] and E4M3(A / s) (saturated at ±448) at the
    clamped entries, with s = ``inline_outlier_scale`` per row. Bounds: scalars or [rows, 1], in
    A's dtype as the clamp compares (``occ_bounds``). Encoding multiplies by 1/s, as ``quantize``."""
    from .formats import E2M1, decode, encode
    from .quantize import QuantizedTensor, QuantSpec, encode_multiplier

    low, high = low.to(x2d.dtype), high.to(x2d.dtype)
    clamped = torch.maximum(torch.minimum(x2d, high), low)
    values = x2d.float()
    scale = inline_outlier_scale(clamped.float().abs().amax(dim=-1, keepdim=True), values.abs().amax(dim=-1, keepdim=True))
    multiplier = encode_multiplier(scale)
    e2m1 = decode(encode(clamped.float() * multiplier, E2M1), E2M1).to(torch.float8_e4m3fn)
    outlier_e4m3 = (values * multiplier).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    outlier = (x2d > high) | (x2d < low)
    data = torch.where(outlier, outlier_e4m3.view(torch.uint8), e2m1.view(torch.uint8)).view(torch.float8_e4m3fn)
    return QuantizedTensor(data, scale, None, QuantSpec("fp4", "row"), x2d.shape, x2d.dtype, fp8=data, outliers_e4m3=True)


def quantize_with_inline_outliers(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor, *, check_finite: bool = False, name: str = "tensor"):
    """The ``inline`` OCC operand: the fused row kernel on CUDA for scalar (tensor-scope) bounds
    (``kernels.quantize_rows.quantize_rows_inline``, bit-exact), else the reference.
    check_finite: raise ``NonFiniteError`` naming ``name`` on NaN/Inf first."""
    from .quantize import QuantSpec, quantize

    if check_finite and not torch.isfinite(x2d).all():
        quantize(x2d, QuantSpec("fp4", "row"), check_finite=True, name=name)  # raises, naming the tensor
    if x2d.is_cuda and low.numel() == 1 and high.numel() == 1:
        from .kernels import triton_available

        if triton_available():
            from .kernels.quantize_rows import quantize_rows_inline

            return quantize_rows_inline(x2d, stacked_bounds((low, high)))
    return quantize_with_inline_outliers_reference(x2d, low, high)


def occ_compensation_residual(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor, config: OCCConfig):
    """The residual the config compensates: exact (``SparseResidual``), hot channels or FP8."""
    if config.compensation == "hot_channels":
        return occ_hot_channel_residual(x2d, low, high, config.hot_channel_fraction)
    if config.compensation == "fp8":
        return occ_fp8_residual(x2d, low, high)
    return occ_residual(x2d, low, high)


@dataclass(frozen=True)
class OCCResult:
    """clamped: clamp(A) in A's dtype and shape [rows, K]; residual: ΔA (sparse)."""

    clamped: torch.Tensor
    residual: SparseResidual

    @property
    def clamp_fraction(self) -> float:
        """Share of entries that were clamped (health statistic)."""
        return self.residual.nnz / max(1, self.clamped.numel())


def occ_bounds(x2d: torch.Tensor, config: OCCConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The clamp bounds in x's dtype (what the clamp compares against): on CUDA for 16-bit
    tensor-scope bounds by the order-statistics kernels (the sample gathered there), else the sort."""
    if config.scope == "tensor":
        flat = x2d.reshape(-1)
        device = _device_bounds(flat, occ_sample_positions(flat.numel(), config, flat.device), config)
        if device is not None:
            return device
    low, high = occ_thresholds(x2d, config)
    return low.to(x2d.dtype), high.to(x2d.dtype)


def clamp_to(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """clamp(A, low, high) in A's dtype (NaN stays NaN)."""
    return torch.maximum(torch.minimum(x2d, high), low)


def occ_residual(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> SparseResidual:
    """ΔA = A - clamp(A) at the entries outside [low, high] only (fp32 values).

    For bf16/fp16 inputs clamp(A) + ΔA equals A exactly (the difference of two 16-bit floats is
    exact in fp32 unless their exponents differ by more than 16). NaN compares false, so a NaN
    entry is neither clamped nor in the residual. One ``nonzero`` (one host sync), then gathers.
    """
    outlier = (x2d > high) | (x2d < low)
    index_dtype = torch.int32 if x2d.numel() < 2**31 else torch.int64
    flat_index = outlier.reshape(-1).nonzero().squeeze(1)
    picked = x2d.reshape(-1)[flat_index]
    if low.numel() > 1:  # per-row bounds
        row = flat_index // x2d.shape[-1]
        low, high = low.reshape(-1)[row], high.reshape(-1)[row]
    values = picked.float() - clamp_to(picked, low, high).float()
    return SparseResidual(flat_index.to(index_dtype), values, tuple(x2d.shape))


def occ_clamp(x2d: torch.Tensor, config: OCCConfig) -> OCCResult:
    """Clamp a [rows, K] activation to its quantile bounds and keep the exact sparse residual."""
    low, high = occ_bounds(x2d, config)
    return OCCResult(clamp_to(x2d, low, high), occ_residual(x2d, low, high))
