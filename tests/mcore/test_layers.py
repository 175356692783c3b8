"""FP4 Column/RowParallelLinear at TP=2 against local FP4 linears on the same shards."""

import pytest

from conftest import relative_error

from . import dist_harness, layer_jobs


@pytest.mark.parametrize("recipe", ["paper", "nvfp4", "direct"])
def test_sharded_scale_semantics_at_tp2(tmp_path, recipe):
    results = dist_harness.run(layer_jobs.sharded_layers_job, recipe, tp=2, outdir=str(tmp_path))
    for rank_result in results:
        for kind in ("column", "row"):
            y, y_ref, gx, gx_ref = rank_result[kind]
            # same quantized operands, fp32 sums in another order (plus one activation-dtype cast)
            assert relative_error(y, y_ref) < 1e-5, (kind, recipe)
            assert relative_error(gx, gx_ref) < 1e-5, (kind, recipe)
