import math

import pytest
import torch

from eds.energy import EnergyMLP, auroc, calibrate_threshold, default_widths, info_nce


def test_info_nce_matches_a_direct_reference():
    torch.manual_seed(0)
    e_good, e_bad, t = torch.randn(5), torch.randn(7), 0.3
    expected = 0.0
    for i in range(5):
        logits = [-e_good[i].item() / t] + [-e.item() / t for e in e_bad]
        expected += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert info_nce(e_good, e_bad, t).item() == pytest.approx(expected / 5, rel=1e-5)
    # and the same as cross-entropy with the good state as the target class
    logits = torch.cat([(-e_good / t)[:, None], (-e_bad / t)[None].expand(5, -1)], 1)
    ce = torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert info_nce(e_good, e_bad, t).item() == pytest.approx(ce.item(), rel=1e-6)


@pytest.mark.parametrize("widths", [None, (16,), (24, 12, 8)])
def test_closed_form_gradient_matches_autograd(widths):
    torch.manual_seed(1)
    mlp = EnergyMLP(32, widths)
    mlp.set_input_stats(torch.randn(100, 32) * 3 + 1)
    h = torch.randn(9, 32, dtype=torch.float64).float() * 4
    e, g = mlp.energy_and_grad(h)
    x = h.clone().requires_grad_(True)
    e_ref = mlp(x)
    (g_ref,) = torch.autograd.grad(e_ref.sum(), x)
    torch.testing.assert_close(e, e_ref.detach())
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    with torch.inference_mode():  # works where generate runs
        _, g_inf = mlp.energy_and_grad(h.bfloat16())
    assert g_inf.dtype == torch.float32


def test_auroc_hand_values():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1, 0, 0])) == pytest.approx(0.5)
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0])) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.tensor([1.0]), torch.tensor([1]))


def test_threshold_separates_when_separable():
    good, bad = torch.tensor([-3.0, -2.0, -1.5]), torch.tensor([1.0, 2.0])
    t = calibrate_threshold(good, bad)
    assert -1.5 < t < 1.0
    good, bad = torch.tensor([0.0, 1.0, 2.0, 10.0]), torch.tensor([3.0, 4.0, 1.5])
    t = calibrate_threshold(good, bad)
    assert 1.0 < t < 1.5  # good below: 0, 1 (2 of 4); bad above: all 3 -> 0.5 + 1.0, the best possible
    assert (good < t).float().mean() + (bad >= t).float().mean() == pytest.approx(1.5)


def test_default_widths_scale_with_hidden_size():
    assert default_widths(896) == (448, 224)
    assert default_widths(4096) == (1024, 512)
    assert default_widths(32) == (128, 64)
