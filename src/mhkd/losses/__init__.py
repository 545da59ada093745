"""Loss math as pure functions of tensors, one module per family, re-exported here."""

from mhkd.losses.logits import kd

__all__ = ["kd"]
