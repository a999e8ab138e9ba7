"""The price table: defaults with sources, overrides from QLAYER_PRICES, charging."""

from __future__ import annotations

import json

import pytest

from qlayer import pricing
from qlayer.errors import ConfigError


def test_defaults_have_sources_and_free_is_free(monkeypatch):
    monkeypatch.delenv("QLAYER_PRICES", raising=False)
    ibm = pricing.price_of("ibm_torino")
    assert ibm.per_qpu_second_usd == pytest.approx(1.6)
    assert "ibm.com" in ibm.source
    forte = pricing.price_of("braket_ionq_forte_1")
    assert forte.estimate(shots=1000) == pytest.approx(0.30 + 1000 * 0.08)
    assert pricing.price_of("aer").estimate(10_000) == 0
    assert pricing.price_of("fake_brisbane").estimate(10_000) == 0


def test_overrides_replace_and_add_and_the_most_specific_wins(monkeypatch, tmp_path):
    prices = {"ibm_*": {"per_qpu_second_usd": 1.2}, "ibm_fez": {"per_qpu_second_usd": 2.0}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(prices))
    monkeypatch.setenv("QLAYER_PRICES", str(path))
    assert pricing.price_of("ibm_torino").per_qpu_second_usd == 1.2
    assert pricing.price_of("ibm_fez").per_qpu_second_usd == 2.0
    assert pricing.price_of("ibm_torino").charge(shots=0, tasks=1, qpu_seconds=10) == 12.0


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[1]", "JSON object"),
        ('{"x": {"per_shot": 1}}', "must be an object with some of"),
        ('{"x": {"per_shot_usd": -1}}', "non-negative"),
        ("{not json", "not JSON"),
        ("/nonexistent/prices.json", "cannot read it"),
    ],
)
def test_bad_overrides_are_refused_clearly(monkeypatch, value, says):
    monkeypatch.setenv("QLAYER_PRICES", value)
    with pytest.raises(ConfigError, match=says):
        pricing.table()
