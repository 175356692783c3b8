"""Session 16: the recipe kernel's stochastic layouts under Nsight Compute (what limits them).

    ncu --clock-control none --kernel-name _quantize_kernel --launch-skip 3 --launch-count 3 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
        python3 ncu_quant.py

Launch order per round: NVFP4 1x16 rows with SR and BF16 values (dgrad's dY), along the tokens with
the RHT, SR and BF16 values (wgrad's dY^T), 1x16 rows round-to-nearest (no SR, for comparison).
"""

import torch

from megatron_fp4.hadamard import rht_matrix
from megatron_fp4.kernels.quantize_nvfp4 import quantize_nvfp4
from megatron_fp4.stochastic import new_seed

x = torch.randn(8192, 12288, device="cuda", dtype=torch.bfloat16)
seed, rht = new_seed(x.device), rht_matrix(1234, device=x.device)
for _ in range(2):
    quantize_nvfp4(x, seed=seed, values=True)
    quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed, values=True)
    quantize_nvfp4(x)
torch.cuda.synchronize()
