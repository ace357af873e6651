"""The classes of the synthetic scenes: names, ids, the fine -> NYU13 map and the class colours.

The fine classes are 18 of the NYU40 classes (:data:`orthojax.data.nyuv2.NYU40_CLASSES`), those an
indoor room of planes and boxes can hold; ``VOID`` (-1) marks unlabelled clutter. The coarse labels
are the NYU 13 classes, through the official NYU40 -> 13 map of the NYUv2 reader
(:data:`orthojax.data.nyuv2.NYU40_TO_13`), so the two label maps of a scene are correlated exactly as
SUN RGB-D's 37- and 13-class labels are.
"""

from __future__ import annotations

import numpy as np

from orthojax.data.nyuv2 import NYU13_CLASSES, NYU40_CLASSES, NYU40_TO_13

__all__ = ["CLASS_COLORS", "FINE_CLASSES", "FINE_ID", "FINE_TO_COARSE", "NYU13_CLASSES", "VOID"]

FINE_CLASSES = ("wall", "floor", "ceiling", "door", "window", "picture", "tv", "cabinet", "bookshelf",
                "bed", "pillow", "chair", "sofa", "table", "desk", "books", "box", "lamp")
"""Fine class names (NYU40 names), index = fine id."""

VOID = -1
"""Fine id of unlabelled pixels (clutter)."""

FINE_ID = {name: i for i, name in enumerate(FINE_CLASSES)}
"""Fine class name -> fine id."""

FINE_TO_COARSE = np.array([NYU40_TO_13[NYU40_CLASSES.index(c)] - 1 for c in FINE_CLASSES], dtype=np.int32)
"""Fine class index -> NYU 13-class index (0..12, order of :data:`NYU13_CLASSES`)."""

CLASS_COLORS = {
    "wall": (0.78, 0.74, 0.68), "floor": (0.55, 0.40, 0.26), "ceiling": (0.92, 0.92, 0.90),
    "door": (0.50, 0.33, 0.20), "window": (0.70, 0.85, 1.00), "picture": (0.60, 0.30, 0.30),
    "tv": (0.08, 0.08, 0.10), "cabinet": (0.62, 0.48, 0.32), "bookshelf": (0.45, 0.30, 0.18),
    "bed": (0.75, 0.75, 0.85), "pillow": (0.95, 0.93, 0.85), "chair": (0.35, 0.22, 0.15),
    "sofa": (0.30, 0.40, 0.55), "table": (0.58, 0.42, 0.25), "desk": (0.40, 0.40, 0.42),
    "books": (0.70, 0.20, 0.20), "box": (0.72, 0.58, 0.38), "lamp": (0.90, 0.85, 0.60),
}
"""Base RGB albedo in [0, 1] of each fine class (jittered per instance by the layout)."""
