"""megatron-fp4: FP4 training (Wang et al., ICML 2025) for Megatron-Core.

The numerics core: element formats (``formats``), scales (``scaling``), quantizers
(``quantize``), the differentiable gradient estimator (``dge``), outlier clamping and
compensation (``occ``), recipes (``recipe``), GEMM backends (``gemm``) and the autograd linear
layer (``linear``).
"""

from .dge import dge_derivative, dge_smooth
from .formats import E1M2, E2M1, E3M0, FP4Format, get_format
from .linear import FP4Linear, FP4LinearFunction, fp4_linear
from .occ import OCCConfig, occ_clamp
from .quantize import NonFiniteError, QuantizedTensor, QuantSpec, fake_quantize, quantize
from .recipe import DGEConfig, FP4Recipe, get_recipe

__version__ = "0.1.0"

__all__ = [
    "DGEConfig",
    "E1M2",
    "E2M1",
    "E3M0",
    "FP4Format",
    "FP4Linear",
    "FP4LinearFunction",
    "FP4Recipe",
    "NonFiniteError",
    "OCCConfig",
    "QuantSpec",
    "QuantizedTensor",
    "dge_derivative",
    "dge_smooth",
    "fake_quantize",
    "fp4_linear",
    "get_format",
    "get_recipe",
    "occ_clamp",
    "quantize",
]
