"""Energy, CO2-equivalent and compute time of a block of work (docs/energy.md).

:class:`EnergyMeter` is a context manager. Inside it, codecarbon's ``OfflineEmissionsTracker`` (no network;
the country's carbon intensity from codecarbon's own tables, the country set in the config) measures
energy when it is installed and enabled; CPU seconds come from ``time.process_time`` (this process, every
thread), GPU seconds from CUDA events around the block when a GPU is in use (else 0).

Which source gave the energy is recorded in ``energy_source``:

- ``codecarbon:<cpu mode>``: codecarbon's CPU mode, e.g. ``intel_rapl`` (RAPL counters, a measurement) or
  ``cpu_load`` (codecarbon's TDP x CPU-load estimate, what it does when RAPL is not readable, as in most
  containers); codecarbon adds RAM (and GPU through NVML when present).
- ``fallback:tdp``: when codecarbon is absent, disabled or fails, the documented estimate

      energy_kWh = (cpu_tdp_W / cores * cpu_s + gpu_tdp_W * gpu_s) / 3.6e6
      co2_kg     = energy_kWh * carbon_intensity_g_per_kWh / 1000

  (:func:`fallback_energy`), with ``cpu_tdp_W`` from the config (default :data:`DEFAULT_CPU_TDP_W`) and the
  carbon intensity from the config (default :data:`WORLD_INTENSITY_G_PER_KWH`).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

logger = logging.getLogger(__name__)

__all__ = ["EnergyRecord", "EnergyMeter", "fallback_energy", "ENERGY_COLUMNS", "DEFAULT_CPU_TDP_W",
           "DEFAULT_GPU_TDP_W", "WORLD_INTENSITY_G_PER_KWH", "DEFAULT_COUNTRY"]

#: Fallback package power of the CPU (W) when the config gives none: a typical server CPU's TDP.
DEFAULT_CPU_TDP_W = 85.0
#: Fallback GPU board power (W) when the config gives none.
DEFAULT_GPU_TDP_W = 300.0
#: World-average carbon intensity of electricity (g CO2-eq per kWh), codecarbon's world default too.
WORLD_INTENSITY_G_PER_KWH = 475.0
#: ISO 3166-1 alpha-3 country code used by codecarbon's offline tracker when the config names none.
DEFAULT_COUNTRY = "USA"
#: Columns an energy record adds to a results row.
ENERGY_COLUMNS = ("energy_kwh", "co2_kg", "cpu_s", "gpu_s", "energy_source")


@dataclass
class EnergyRecord:
    """What one measured block cost: energy (kWh), CO2-eq (kg), CPU and GPU seconds, wall seconds, source."""

    energy_kwh: float
    co2_kg: float
    cpu_s: float
    gpu_s: float
    wall_s: float
    energy_source: str
    country: str

    def columns(self) -> dict[str, Any]:
        """The :data:`ENERGY_COLUMNS` of a results row."""
        d = asdict(self)
        return {k: d[k] for k in ENERGY_COLUMNS}


def fallback_energy(cpu_s: float, gpu_s: float = 0.0, cpu_tdp_w: float = DEFAULT_CPU_TDP_W,
                    cores: int | None = None, gpu_tdp_w: float = DEFAULT_GPU_TDP_W,
                    intensity_g_per_kwh: float = WORLD_INTENSITY_G_PER_KWH) -> tuple[float, float]:
    """``(energy_kWh, co2_kg)`` estimated from compute time (module docstring formula).

    Each busy core draws ``cpu_tdp_w / cores`` (cpu_s is summed over threads), a busy GPU ``gpu_tdp_w``.
    """
    cores = cores or os.cpu_count() or 1
    if cpu_s < 0 or gpu_s < 0 or cpu_tdp_w < 0 or gpu_tdp_w < 0 or intensity_g_per_kwh < 0:
        raise ValueError("cpu_s, gpu_s, TDPs and carbon intensity must be >= 0")
    kwh = (cpu_tdp_w / cores * cpu_s + gpu_tdp_w * gpu_s) / 3.6e6
    return kwh, kwh * intensity_g_per_kwh / 1000.0


class EnergyMeter:
    """Measure a block: ``with EnergyMeter(country_iso_code="FRA") as m: ...``; then ``m.record``.

    Parameters
    ----------
    country_iso_code : str
        ISO 3166-1 alpha-3 code of where the machine runs (codecarbon's offline carbon intensity).
    use_codecarbon : bool
        False forces the TDP fallback.
    cpu_tdp_w, gpu_tdp_w : float, optional
        Fallback powers (W); defaults :data:`DEFAULT_CPU_TDP_W`, :data:`DEFAULT_GPU_TDP_W`.
    carbon_intensity_g_per_kwh : float, optional
        Fallback carbon intensity; default :data:`WORLD_INTENSITY_G_PER_KWH`.
    device : str
        ``"cuda..."`` times the block with CUDA events too (GPU seconds); anything else gives 0.
    """

    def __init__(self, country_iso_code: str = DEFAULT_COUNTRY, use_codecarbon: bool = True,
                 cpu_tdp_w: float | None = None, gpu_tdp_w: float | None = None,
                 carbon_intensity_g_per_kwh: float | None = None, device: str = "cpu") -> None:
        self.country = str(country_iso_code or DEFAULT_COUNTRY).upper()
        self.use_codecarbon = bool(use_codecarbon)
        self.cpu_tdp_w = DEFAULT_CPU_TDP_W if cpu_tdp_w is None else float(cpu_tdp_w)
        self.gpu_tdp_w = DEFAULT_GPU_TDP_W if gpu_tdp_w is None else float(gpu_tdp_w)
        self.intensity = WORLD_INTENSITY_G_PER_KWH if carbon_intensity_g_per_kwh is None else float(
            carbon_intensity_g_per_kwh)
        self.device = str(device)
        self.record: EnergyRecord | None = None
        self._tracker: Any = None
        self._events: Any = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, device: str = "cpu") -> "EnergyMeter":
        """From the ``energy`` node of the Hydra config (keys as the constructor's; missing keys: defaults)."""
        cfg = dict(cfg or {})
        return cls(country_iso_code=cfg.get("country_iso_code") or DEFAULT_COUNTRY,
                   use_codecarbon=bool(cfg.get("codecarbon", True)), cpu_tdp_w=cfg.get("cpu_tdp_w"),
                   gpu_tdp_w=cfg.get("gpu_tdp_w"), carbon_intensity_g_per_kwh=cfg.get("carbon_intensity_g_per_kwh"),
                   device=device)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "EnergyMeter":
        self._cuda = False
        if self.device.startswith("cuda"):
            import torch  # noqa: PLC0415

            if torch.cuda.is_available():
                self._cuda = True
                self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                self._events[0].record()
        if self.use_codecarbon:
            self._tracker = self._start_codecarbon()
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        cpu_s = time.process_time() - self._cpu0
        wall_s = time.perf_counter() - self._wall0
        gpu_s = 0.0
        if self._cuda:
            import torch  # noqa: PLC0415

            self._events[1].record()
            torch.cuda.synchronize()
            gpu_s = self._events[0].elapsed_time(self._events[1]) / 1000.0
        measured = self._stop_codecarbon() if self._tracker is not None else None
        if measured is not None:
            kwh, co2, source = measured
        else:
            kwh, co2 = fallback_energy(cpu_s, gpu_s, self.cpu_tdp_w, None, self.gpu_tdp_w, self.intensity)
            source = "fallback:tdp"
        self.record = EnergyRecord(kwh, co2, cpu_s, gpu_s, wall_s, source, self.country)

    # ------------------------------------------------------------------ codecarbon
    def _start_codecarbon(self) -> Any:
        try:
            import warnings  # noqa: PLC0415

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.getLogger("codecarbon").setLevel(logging.ERROR)
                from codecarbon import OfflineEmissionsTracker  # noqa: PLC0415

                tracker = OfflineEmissionsTracker(country_iso_code=self.country, save_to_file=False,
                                                  log_level="error", tracking_mode="process",
                                                  measure_power_secs=1, allow_multiple_runs=True)
                tracker.start()
            return tracker
        except Exception as exc:  # noqa: BLE001 - any failure of the optional meter means: use the fallback
            logger.info("codecarbon unavailable (%s: %s); using the TDP fallback", type(exc).__name__, exc)
            return None

    def _stop_codecarbon(self) -> tuple[float, float, str] | None:
        tracker, self._tracker = self._tracker, None
        try:
            co2 = tracker.stop()
            data = tracker.final_emissions_data
            mode = "unknown"
            for hw in getattr(tracker, "_hardware", []):
                if type(hw).__name__ == "CPU":
                    mode = str(getattr(hw, "_mode", "unknown")).lower().replace(" ", "_")
            return float(data.energy_consumed), float(co2 or 0.0), f"codecarbon:{mode}"
        except Exception as exc:  # noqa: BLE001
            logger.info("codecarbon failed to report (%s: %s); using the TDP fallback", type(exc).__name__, exc)
            return None
