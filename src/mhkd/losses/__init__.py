"""Loss math as pure functions of tensors, one module per family, re-exported here."""

from mhkd.losses.boundaries import ab, ab_stages, hcl, ofd, ofd_margin
from mhkd.losses.crd import ContrastMemory, CRDEmbed, crd, nce_loss
from mhkd.losses.dkd import dkd, dkd_parts
from mhkd.losses.features import at, attention_map, fitnet, sp
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
from mhkd.losses.relations import cc, cc_delta, correlation_matrix, pkt, rkd
from mhkd.losses.stages import (
    factor,
    factor_transfer,
    fsp,
    fsp_matrix,
    kdsvd,
    nst,
    vid,
    vid_log_scale_init,
    vid_variance,
)

__all__ = [
    "CRDEmbed",
    "ContrastMemory",
    "ab",
    "ab_stages",
    "at",
    "attention_map",
    "cc",
    "cc_delta",
    "conditional_probabilities",
    "correlation_matrix",
    "cosine_kernel",
    "crd",
    "dkd",
    "dkd_parts",
    "factor",
    "factor_transfer",
    "fitnet",
    "fsp",
    "fsp_matrix",
    "hcl",
    "heads_ce",
    "information_flow",
    "information_flow_pair",
    "jeffreys",
    "kd",
    "kdsvd",
    "multi_head_kd",
    "nce_loss",
    "nst",
    "ofd",
    "ofd_margin",
    "ohkd",
    "pkt",
    "rkd",
    "sp",
    "student_t_kernel",
    "vid",
    "vid_log_scale_init",
    "vid_variance",
]
