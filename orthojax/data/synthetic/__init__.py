"""Procedural indoor scenes: the default data of the NYUv2 and SUN RGB-D experiments.

A room (floor, walls, ceiling) furnished with axis-aligned boxes (beds, tables with legs, chairs,
sofas, cabinets, shelves, books, lamps, doors, windows, pictures, TVs and unlabelled clutter) is
ray-cast from a pinhole camera (horizontal field of view 60 degrees, square pixels). Every target
comes from the same ray hit, so they are geometrically consistent:

* ``depth``: camera z-distance in metres; 0 (invalid) on window glass, as with a Kinect;
* ``normal``: unit surface normal in the camera frame (x right, y down, z forward), facing the
  camera; all-zero (missing, the rule of the losses and metrics) exactly where depth is invalid;
* fine labels: the 18 :data:`FINE_CLASSES` (NYU40 names; -1 = unlabelled clutter);
* coarse labels: the NYU 13 classes via the official 40 -> 13 mapping.

``image`` is RGB in [0, 1] with per-class colours, per-instance jitter, procedural textures (planks,
tiles, grain, noise) and Lambertian shading from a ceiling light. Scene ``i`` of a split depends only
on (seed, split, i).

Modules: :mod:`~orthojax.data.synthetic.vocabulary` (classes, ids, colours; the NYU vocabulary
itself belongs to :mod:`orthojax.data.nyuv2`), :mod:`~orthojax.data.synthetic.layout` (which objects
where), :mod:`~orthojax.data.synthetic.render` (camera and ray casting) and
:mod:`~orthojax.data.synthetic.datasets` (the NYUv2- and SUN RGB-D-style splits).
"""

from orthojax.data.synthetic.datasets import render_example, synthetic_nyuv2, synthetic_scenes, synthetic_sunrgbd
from orthojax.data.synthetic.layout import scene_layout
from orthojax.data.synthetic.render import render_scene
from orthojax.data.synthetic.vocabulary import CLASS_COLORS, FINE_CLASSES, FINE_ID, FINE_TO_COARSE, NYU13_CLASSES, VOID

__all__ = [
    "CLASS_COLORS", "FINE_CLASSES", "FINE_ID", "FINE_TO_COARSE", "NYU13_CLASSES", "VOID", "render_example",
    "render_scene", "scene_layout", "synthetic_nyuv2", "synthetic_scenes", "synthetic_sunrgbd",
]
