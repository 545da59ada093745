"""Loss math as pure functions of tensors, one module per family, re-exported here."""

from mhkd.losses.logits import kd
from mhkd.losses.mhkd import heads_ce, multi_head_kd, ohkd

__all__ = ["heads_ce", "kd", "multi_head_kd", "ohkd"]
