"""Energy and CO2-eq of results rows (lwgpu.eval.energy, lwgpu-bench)."""
import os

import pytest
from hydra import compose, initialize_config_dir

from lwgpu.cli.bench import CONFIG_DIR, run
from lwgpu.eval import energy
from lwgpu.tracking import read_jsonl


def test_fallback_formula_on_known_numbers():
    # 1 h of one core of a 4-core 100 W CPU = 25 Wh; 30 min of a 300 W GPU = 150 Wh; 400 g/kWh
    kwh, co2 = energy.fallback_energy(3600.0, 1800.0, cpu_tdp_w=100.0, cores=4, gpu_tdp_w=300.0,
                                      intensity_g_per_kwh=400.0)
    assert kwh == pytest.approx(0.025 + 0.15, rel=1e-12)
    assert co2 == pytest.approx(0.175 * 0.4, rel=1e-12)
    with pytest.raises(ValueError):
        energy.fallback_energy(-1.0)


def test_meter_fallback_path_uses_the_formula():
    with energy.EnergyMeter(use_codecarbon=False, cpu_tdp_w=120.0, carbon_intensity_g_per_kwh=300.0) as m:
        sum(i * i for i in range(300_000))
    r = m.record
    assert r.energy_source == "fallback:tdp" and r.gpu_s == 0.0
    assert r.cpu_s <= r.wall_s * os.cpu_count() + 0.05
    want_kwh, want_co2 = energy.fallback_energy(r.cpu_s, 0.0, 120.0, None, 300.0, 300.0)
    assert r.energy_kwh == pytest.approx(want_kwh, rel=1e-12) and r.co2_kg == pytest.approx(want_co2, rel=1e-12)
    assert set(r.columns()) == set(energy.ENERGY_COLUMNS)


def test_codecarbon_path_uses_the_country_intensity():
    pytest.importorskip("codecarbon")
    ratios = {}
    for country in ("FRA", "POL"):
        with energy.EnergyMeter(country_iso_code=country) as m:
            sum(i * i for i in range(300_000))
        assert m.record.energy_source.startswith("codecarbon:")
        ratios[country] = m.record.co2_kg / m.record.energy_kwh  # kg per kWh
    # France's grid (nuclear, hydro) is several times cleaner than Poland's (coal)
    assert 0.0 < ratios["FRA"] < 0.3 < ratios["POL"] < 1.5


def test_bench_rows_carry_energy(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "debug=default", "search=single", "market=synthetic_spec_only", "index=none",
            "energy.codecarbon=false", "energy.cpu_tdp_w=50", "energy.carbon_intensity_g_per_kwh=200"])
    run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert rows
    for r in rows:
        assert r["energy_source"] == "fallback:tdp" and r["energy_scope"] == "run" and r["gpu_s"] == 0.0
        kwh, co2 = energy.fallback_energy(r["cpu_s"], 0.0, 50.0, None, 300.0, 200.0)
        assert r["energy_kwh"] == pytest.approx(kwh, rel=1e-9) and r["co2_kg"] == pytest.approx(co2, rel=1e-9)
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert set(energy.ENERGY_COLUMNS) <= set(header)
