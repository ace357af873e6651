"""Former home of the Gramian weightings; they live in :mod:`orthojax.aggregators` (one module per method,
:mod:`orthojax.aggregators.gramian` for the Gramian and the combination). Re-exported here for old imports."""

from orthojax.aggregators.aligned_mtl import aligned_mtl_solution, aligned_mtl_weights
from orthojax.aggregators.cagrad import cagrad_solution, cagrad_weights
from orthojax.aggregators.gramian import GramianLike, ScaledGramian, Solution, as_scaled_gramian, scaled_gramian
from orthojax.aggregators.gramian import combine, combine_unit, gramian
from orthojax.aggregators.imtl_g import imtl_g_solution, imtl_g_weights
from orthojax.aggregators.mgda import mgda_solution, mgda_weights
from orthojax.aggregators.pcgrad import pcgrad_order, pcgrad_solution, pcgrad_weights
from orthojax.aggregators.upgrad import dualproj_solution, dualproj_weights, upgrad_solution, upgrad_weights

__all__ = [
    "GramianLike",
    "ScaledGramian",
    "Solution",
    "aligned_mtl_solution",
    "aligned_mtl_weights",
    "as_scaled_gramian",
    "cagrad_solution",
    "cagrad_weights",
    "combine",
    "combine_unit",
    "dualproj_solution",
    "dualproj_weights",
    "gramian",
    "imtl_g_solution",
    "imtl_g_weights",
    "mgda_solution",
    "mgda_weights",
    "pcgrad_order",
    "pcgrad_solution",
    "pcgrad_weights",
    "scaled_gramian",
    "upgrad_solution",
    "upgrad_weights",
]
