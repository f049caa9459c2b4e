"""The two input channels the project's Cellpose smear model sees.

Channel 0 is the cell signal (1 - green: haemoglobin and stained cytoplasm absorb green,
so every cell is bright on a dark background); channel 1 highlights nuclei and platelets
(the violet of Romanowsky stains: blue minus green, clipped). Both come from RGB in
[0, 1]; grayscale input gives an empty second channel.
"""

from __future__ import annotations

import numpy as np


def smear_channels(rgb: np.ndarray) -> np.ndarray:
    """float RGB (H, W, 3) in [0, 1] → float32 (H, W, 2) Cellpose input."""
    rgb = np.asarray(rgb, dtype=np.float32)
    g = rgb[..., 1]
    cell = 1.0 - g
    nucleus = np.clip(rgb[..., 2] - g, 0.0, None)
    return np.stack([cell, nucleus], axis=-1).astype(np.float32)
