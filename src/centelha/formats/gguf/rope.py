"""Llama 3's rope scaling as llama.cpp stores it: not as metadata but as a tensor,
`rope_freqs`, of one divisor per rotary frequency. Export computes the table from
Hugging Face's `rope_scaling`; import recovers `rope_scaling` from the table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from centelha.errors import CentelhaError


def _wavelengths(theta: float, head_dim: int) -> np.ndarray:
    """The wavelength, in positions, of each rotary frequency."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return 2 * math.pi / inv_freq


def llama3_factors(scaling: dict, theta: float, head_dim: int) -> np.ndarray:
    """Llama 3.1's divisor for each rotary frequency (what llama.cpp's `rope_freqs` holds)."""
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    original = scaling.get("original_max_position_embeddings", 8192)
    wavelength = _wavelengths(theta, head_dim)
    smooth = (original / wavelength - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelength < original / high, 1.0,
                    np.where(wavelength > original / low, factor, blended))


def llama3_scaling_from_factors(factors: np.ndarray, theta: float, head_dim: int,
                                path: Path) -> dict | None:
    """Recover Hugging Face's llama3 rope_scaling from the per-frequency divisors.

    In the blended band, smooth = (1/f - 1/factor) / (1 - 1/factor) is linear in
    1/wavelength: smooth = a/wavelength - b, with a = original/(high - low) and
    b = low/(high - low). Only a and b are determined, so low = 1 (every Llama 3 uses it)
    fixes the rest; a band of fewer than two values falls back to Llama 3's high = 4.
    """
    factor = float(factors.max())
    if factor <= 1.0 + 1e-6:
        return None
    wavelength = _wavelengths(theta, head_dim)
    band = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    smooth = (1 / factors[band] - 1 / factor) / (1 - 1 / factor)
    low, high, original = 1.0, 4.0, 8192.0
    if band.sum() >= 2:
        a, minus_b = np.polyfit(1 / wavelength[band], smooth, 1)
        if minus_b < 0:
            high, original = 1 - 1 / minus_b, -a / minus_b
    elif band.sum() == 1:
        original = wavelength[band][0] * (low + (high - low) * smooth[0])
    scaling = {"rope_type": "llama3", "factor": round(factor, 6), "low_freq_factor": low,
               "high_freq_factor": round(float(high), 4),
               "original_max_position_embeddings": int(round(float(original)))}
    if not np.allclose(llama3_factors(scaling, theta, head_dim), factors, rtol=1e-3):
        raise CentelhaError(f"{path}: rope_freqs.weight does not follow Llama 3's rope "
                            "scaling, the only frequency table centelha supports")
    return scaling
