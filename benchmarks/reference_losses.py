"""Record the reference implementations' loss values and gradients for the CRD benchmark's and
mdistiller's remaining baselines (NST, VID, KDSVD, AB, FT, FSP, OFD, ReviewKD), on seeded
small inputs, as test data: ``tests/data/reference_losses/METHOD.pt``.

Each file holds the inputs, the reference's learned modules' weights (``state.*``), its loss
and the gradient of that loss with respect to every student input (``grad.*``), so the tests
compare mhkd's losses with the reference code without needing it (CI has no reference code).

    python benchmarks/reference_losses.py --repdistiller DIR \\
        --mdistiller DIR [--out tests/data/reference_losses]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

B = 3


def _maps(seed: int, shapes: list[tuple[int, ...]], grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, *s, generator=g).requires_grad_(grad) for s in shapes]


def _record(student, teacher, loss, **extra) -> dict:
    loss.backward()
    record = {"loss": loss.detach().double()}
    for i, s in enumerate(student):
        record[f"student.{i}"] = s.detach()
        record[f"grad.{i}"] = s.grad.detach()
    for i, t in enumerate(teacher):
        record[f"teacher.{i}"] = t.detach()
    for prefix, module in extra.items():
        for name, value in module.state_dict().items():
            record[f"state.{prefix}.{name}"] = value.detach().clone()
    return record


def repdistiller(root: Path) -> dict[str, dict]:
    sys.path.insert(0, str(root))
    from distiller_zoo import FSP, KDSVD, ABLoss, FactorTransfer, NSTLoss, VIDLoss

    out = {}
    s = _maps(1, [(4, 8, 8), (6, 4, 4)], grad=True)
    t = _maps(2, [(5, 4, 4), (7, 4, 4)])
    out["nst"] = _record(s, t, sum(NSTLoss()(s, t)))

    s = _maps(3, [(4, 8, 8), (6, 4, 4)], grad=True)
    t = _maps(4, [(5, 4, 4), (7, 4, 4)])
    torch.manual_seed(5)
    vids = nn.ModuleList([VIDLoss(4, 5, 5), VIDLoss(6, 7, 7)])
    loss = sum(c(f_s, f_t) for f_s, f_t, c in zip(s, t, vids, strict=True))
    out["vid"] = _record(s, t, loss, vid=vids)

    shapes = [(4, 8, 8), (6, 4, 4), (6, 4, 4)]
    s, t = _maps(6, shapes, grad=True), _maps(7, shapes)
    out["kdsvd"] = _record(s, t, sum(KDSVD()(s, t)))

    s = _maps(8, [(4, 8, 8), (6, 4, 4)], grad=True)
    t = _maps(9, [(4, 8, 8), (6, 4, 4)])
    out["ab"] = _record(s, t, sum(ABLoss(2)(s, t)))

    s, t = _maps(10, [(4, 8, 8)], grad=True), _maps(11, [(5, 4, 4)])
    out["ft"] = _record(s, t, FactorTransfer()(s[0], t[0]))

    shapes = [(4, 8, 8), (6, 4, 4), (6, 2, 2)]
    s, t = _maps(12, shapes, grad=True), _maps(13, shapes)
    crit = FSP([(B, *x) for x in shapes], [(B, *x) for x in shapes])
    out["fsp"] = _record(s, t, sum(crit(s, t)))
    return out


class _FakeNet(nn.Module):
    """Hands fixed features to an mdistiller distiller as its student or teacher would."""

    def __init__(self, feats, preact, pooled, channels, bns=None):
        super().__init__()
        self.out = {"feats": feats, "preact_feats": preact, "pooled_feat": pooled}
        self.channels = channels
        self.bns = nn.ModuleList(bns or [])

    def forward(self, image):
        return torch.zeros(B, 4, requires_grad=True), self.out

    def get_stage_channels(self):
        return self.channels

    def get_bn_before_relu(self):
        return list(self.bns)


def _bns(seed: int, channels: list[int]) -> list[nn.BatchNorm2d]:
    g = torch.Generator().manual_seed(seed)
    bns = []
    for c in channels:
        bn = nn.BatchNorm2d(c)
        bn.weight.data = torch.randn(c, generator=g)
        bn.bias.data = torch.randn(c, generator=g) * 2  # some channels beyond the 0.1 % tail
        bns.append(bn)
    return bns


def mdistiller(root: Path) -> dict[str, dict]:
    sys.path.insert(0, str(root))
    from mdistiller.distillers.OFD import OFD
    from mdistiller.distillers.ReviewKD import ReviewKD

    out = {}
    image, target = torch.zeros(B, 3, 8, 8), torch.zeros(B, dtype=torch.long)
    s = _maps(20, [(4, 8, 8), (6, 4, 4), (8, 2, 2)], grad=True)
    t = _maps(21, [(5, 16, 16), (7, 4, 4), (9, 2, 2)])
    stem = _maps(22, [(2, 8, 8)])[0]
    bns = _bns(23, [5, 7, 9])
    student = _FakeNet(None, [stem, *s], None, [2, 4, 6, 8])
    teacher = _FakeNet(None, [stem, *t], None, [2, 5, 7, 9], bns)
    cfg = SimpleNamespace(
        OFD=SimpleNamespace(
            LOSS=SimpleNamespace(CE_WEIGHT=1.0, FEAT_WEIGHT=1.0),
            CONNECTOR=SimpleNamespace(KERNEL_SIZE=1),
        )
    )
    torch.manual_seed(24)
    ofd = OFD(student, teacher, cfg)
    ofd.train()
    _, terms = ofd.forward_train(image, target)
    record = _record(s, t, terms["loss_kd"], connectors=ofd.connectors)
    for i, bn in enumerate(bns):
        record[f"bn.{i}.weight"], record[f"bn.{i}.bias"] = bn.weight.detach(), bn.bias.detach()
        record[f"margin.{i}"] = ofd.margins[i].flatten()
    out["ofd"] = record

    s = _maps(30, [(4, 8, 8), (6, 4, 4), (8, 2, 2)], grad=True)
    s_pooled = _maps(31, [(8,)], grad=True)[0]
    t = _maps(32, [(5, 8, 8), (7, 4, 4), (9, 2, 2)])
    t_pooled = _maps(33, [(9,)])[0]
    stem = _maps(34, [(2, 8, 8)])[0]
    student = _FakeNet([stem, *s], None, s_pooled, None)
    teacher = _FakeNet(None, [stem, *t], t_pooled, None)
    cfg = SimpleNamespace(
        REVIEWKD=SimpleNamespace(
            SHAPES=[1, 2, 4, 8],
            OUT_SHAPES=[1, 2, 4, 8],
            IN_CHANNELS=[4, 6, 8, 8],
            OUT_CHANNELS=[5, 7, 9, 9],
            CE_WEIGHT=1.0,
            REVIEWKD_WEIGHT=1.0,
            WARMUP_EPOCHS=1,
            STU_PREACT=False,
            MAX_MID_CHANNEL=512,
        )
    )
    torch.manual_seed(35)
    review = ReviewKD(student, teacher, cfg)
    review.train()
    _, terms = review.forward_train(image, target, epoch=1)
    out["reviewkd"] = _record([*s, s_pooled], [*t, t_pooled], terms["loss_kd"], abfs=review.abfs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repdistiller", type=Path, required=True)
    parser.add_argument("--mdistiller", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("tests/data/reference_losses"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records = {**repdistiller(args.repdistiller), **mdistiller(args.mdistiller)}
    for name, record in records.items():
        torch.save(record, args.out / f"{name}.pt")
        print(f"{name}: loss {record['loss'].item():.10g}")


if __name__ == "__main__":
    main()
