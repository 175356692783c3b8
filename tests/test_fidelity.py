import math

import torch

from megatron_fp4.fidelity import activation_ablation, fidelity_metrics, synthetic_llm_activation
from megatron_fp4.tools import fidelity_report


def test_metrics_on_known_values():
    x = torch.tensor([3.0, 4.0])
    cosine, mse, snr = fidelity_metrics(x, torch.tensor([3.0, 3.0]))
    assert math.isclose(mse, 0.5) and math.isclose(snr, 10 * math.log10(25 / 1))
    assert math.isclose(cosine, 21 / (5 * math.sqrt(18)))
    assert fidelity_metrics(x, x)[2] == float("inf")


def test_ablation_compensation_restores_fidelity():
    rows = activation_ablation(synthetic_llm_activation(512, 256, seed=int(torch.randint(0, 1000, ()))))
    by_key = {(r.method, r.alpha): r for r in rows}
    direct = by_key[("direct cast", None)]
    for alpha in (0.999, 0.99, 0.97):
        clamp, comp = by_key[("clamp", alpha)], by_key[("clamp+comp", alpha)]
        assert comp.snr_db > clamp.snr_db and comp.snr_db > direct.snr_db
        assert abs(comp.clamp_fraction - 2 * (1 - alpha)) < 0.01
    # a lower alpha clamps more, so the compensated reconstruction is closer
    assert by_key[("clamp+comp", 0.97)].mse < by_key[("clamp+comp", 0.999)].mse


def test_report_cli_on_a_saved_tensor(tmp_path, capsys):
    path = tmp_path / "act.pt"
    torch.save(torch.randn(64, 128), path)
    report = fidelity_report.main(["--input", str(path), "--alphas", "0.99"])
    assert "clamp+comp" in report and "(64, 128)" in capsys.readouterr().out
