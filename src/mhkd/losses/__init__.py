"""Loss math as pure functions of tensors, one module per family, re-exported here."""

from mhkd.losses.infoflow import (
    conditional_probabilities,
    cosine_kernel,
    information_flow,
    information_flow_pair,
    jeffreys,
    student_t_kernel,
)
from mhkd.losses.logits import kd
from mhkd.losses.mhkd import heads_ce, multi_head_kd, ohkd

__all__ = [
    "conditional_probabilities",
    "cosine_kernel",
    "heads_ce",
    "information_flow",
    "information_flow_pair",
    "jeffreys",
    "kd",
    "multi_head_kd",
    "ohkd",
    "student_t_kernel",
]
