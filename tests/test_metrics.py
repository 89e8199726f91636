import pytest

from eds.metrics import Rate, wilson


def test_wilson_against_hand_computed_values():
    # 5 of 10: centre 0.5, half-width z*sqrt(.025 + z^2/400)/(1 + z^2/10) = 0.2634 -> [0.2366, 0.7634]
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    # 0 of 20: [0, z^2/(n + z^2)] = [0, 0.1611]
    lo, hi = wilson(0, 20)
    assert lo == 0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_rate():
    r = Rate(74, 75)
    assert r.value == pytest.approx(0.98667, abs=1e-5)
    assert str(r).startswith("98.7% [92.8%, 99.8%] (74/75)")
    assert r.to_dict()["ci95"][0] == pytest.approx(0.928, abs=1e-3)
