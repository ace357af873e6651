"""The Gramian G = J J^T of a Jacobian and the combination d = w @ J (scale-safe; see the implementation
in :mod:`orthojax.methods.gramian`)."""

from orthojax.methods.gramian import combine, gramian

__all__ = ["combine", "gramian"]
