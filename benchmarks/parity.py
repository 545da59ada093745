"""Parity of mhkd's recipes with the reference code behind their numbers, step by step.

For every recipe whose number comes from code (RepDistiller's ``train_student.py`` /
``train_teacher.py``, mdistiller's DKD configs) this builds the reference model and criterion
from a checkout of that code, loads the same weights into both sides (the reference model's
state_dict is saved in RepDistiller's checkpoint layout and read back through
:func:`mhkd.checkpoint.load_model`; learned modules such as FitNet's regressor, CC's and CRD's
embeddings and CRD's memory banks, VID's regressors and variances, FT's translator and
paraphraser, AB's connectors are copied across), runs one batch through both, and compares
every weighted loss term, the student's gradients, the weights after one SGD step and the
learning rate of every epoch of the schedule. The reference's settings are read from the
recipe's ``paper.reference`` (``-r/-a/-b`` of the command line it names, the mdistiller config
file) and the reference code's own defaults, never from the recipe's own values. A recipe
with a pre-training stage (AB, FSP, FT) is compared at its distillation stage; AB's and FSP's
pre-training step is a row of its own (RepDistiller's ``helper/pretrain.py``).

    python benchmarks/parity.py --repdistiller /path/RepDistiller --mdistiller /path/mdistiller

The reference code is imported from the directories given (nothing of it is copied here).
``--record DIR`` also writes, for a subset of recipes, the reference's numbers on weights seeded
by mhkd's own code, which ``tests/test_parity.py`` checks without the reference code.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import io
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mhkd import api, checkpoint, models, optim, pipelines
from mhkd import config as cfg
from mhkd.checkpoint import load_model
from mhkd.data.batch import Batch
from mhkd.distill import DistillForward, DistillStep
from mhkd.loop import set_seed
from mhkd.losses.crd import ContrastMemory
from mhkd.methods import MethodContext, MethodSet, Trained
from mhkd.models.foreign import to_mhkd
from mhkd.pipelines.builder import build_methods
from mhkd.pipelines.pretrain import (
    PRETRAINED,
    _stage_one_config,
    _stage_two_config,
    paraphraser_path,
    pretraining_method,
)

ROOT = Path(__file__).resolve().parents[1]
#: mhkd zoo name -> RepDistiller/mdistiller model_dict name (the others are spelt alike).
REF_NAMES = {"mobilenetv2": "MobileNetV2", "shufflenetv2": "ShuffleV2", "shufflenetv1": "ShuffleV1"}
#: RepDistiller's train_student.py/train_teacher.py: these students train at lr 0.01.
SMALL_LR = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
DATA = {"cifar100": (100, 50_000), "svhn": (10, 73_257)}  # classes, training samples
#: "Equal" when both sides run on this machine: terms (relative to max(1, |term|)), gradient
#: and step norms (relative to the largest), float32 noise.
TERM_TOL, STEP_TOL = 2e-4, 1e-4
#: Gradient and step norms against figures recorded on another CPU: oneDNN's AVX-512 and AVX2
#: kernels put resnet20's gradient norms at initialisation 3.0e-4 apart (an AMD EPYC with
#: AVX-512 against the AVX2-only one that recorded them; ONEDNN_MAX_CPU_ISA=AVX2 brings the
#: gap to 7e-8), while the loss terms agree to 1e-6.
RECORDED_STEP_TOL = 1e-3
BATCH = 8
#: Reference-code quirks that change BatchNorm running statistics only (never a loss term, a
#: gradient or a weight): mdistiller's WRN ``forward`` re-applies three BNs to build its
#: pre-activation features, so in training their running statistics take two momentum updates
#: per step (RepDistiller's WRN and mhkd take one).
BN_QUIRKS = {
    ("mdistiller", "wrn_16_2"): (
        "block2.layer.0.bn1.",
        "block3.layer.0.bn1.",
        "bn1.",
    ),
}
#: The subset whose reference figures tests/test_parity.py checks (methods x families).
RECORD = (
    "kd_cifar100_vgg13-vgg8",
    "fitnet_cifar100_vgg13-vgg8",
    "at_cifar100_vgg13-mobilenetv2",
    "at_cifar100_wrn_40_2-wrn_16_2",
    "sp_cifar100_resnet32x4-shufflenetv2",
    "cc_cifar100_wrn_40_2-wrn_16_2",
    "rkd_cifar100_vgg13-vgg8",
    "pkt_cifar100_vgg13-mobilenetv2",
    "crd_cifar100_resnet110-resnet20",
    "dkd_cifar100_vgg13-mobilenetv2",
    "ce_cifar100_student-resnet20",
    "vid_cifar100_vgg13-vgg8",
    "ft_cifar100_vgg13-vgg8",
)


# ---- the reference setting a recipe cites --------------------------------------------------------
@dataclass
class RefSetting:
    """What the reference code runs for a recipe (``code`` None: no reference code exists)."""

    code: str | None  # "repdistiller", "mdistiller" or None
    distill: str = "ce"  # train_student.py's --distill (ce: train_teacher.py), or "dkd"
    gamma: float = 1.0
    alpha: float = 0.0
    beta: float = 0.0
    lr: float = 0.05
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 240
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    rate: float = 0.1
    dkd: dict[str, float] = field(default_factory=dict)


def _flag(text: str, flag: str, default: float) -> float:
    found = re.search(rf"(?:^|\s){flag} ([-\d.e]+)", text)
    return float(found.group(1)) if found else default


def reference_setting(run: cfg.RunConfig, reference: str, mdistiller: Path | None) -> RefSetting:
    """The reference's setting, from the recipe's cited command line or config and the
    reference code's defaults (the paper's text for SVHN, which has no published code)."""
    student = REF_NAMES.get(run.models.student, run.models.student)
    setting = RefSetting(code=None, lr=0.01 if student in SMALL_LR else 0.05)  # MHKD: no code
    if "mdistiller configs/" in reference and mdistiller is not None:
        rel = re.search(r"mdistiller (configs/\S+\.yaml)", reference).group(1)
        tree = yaml.safe_load((mdistiller / rel).read_text())
        solver, dkd = tree.get("SOLVER", {}), tree.get("DKD", {})
        setting = RefSetting(
            code="mdistiller",
            distill="dkd",
            lr=solver["LR"],
            batch_size=solver["BATCH_SIZE"],
            momentum=solver["MOMENTUM"],
            weight_decay=solver["WEIGHT_DECAY"],
            epochs=solver["EPOCHS"],
            milestones=list(solver["LR_DECAY_STAGES"]),
            rate=solver["LR_DECAY_RATE"],
            dkd={"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20, **dkd},
        )  # fmt: skip  (defaults: mdistiller/engine/cfg.py)
    elif "--distill" in reference or "train_teacher.py" in reference:
        distill = re.search(r"--distill (\w+)", reference)
        setting = RefSetting(
            code="repdistiller",
            distill=distill.group(1) if distill else "ce",
            gamma=_flag(reference, "-r", 1.0),
            alpha=_flag(reference, "-a", 0.0),
            beta=_flag(reference, "-b", 0.0),
            lr=0.01 if student in SMALL_LR else 0.05,
        )
    if run.data.name == "svhn":  # MHKD paper Sec. 4.2: the only source of these settings
        setting.lr, setting.batch_size, setting.epochs = 0.001, 200, 150
        setting.milestones = [80, 110, 135]
    return setting


def reference_lrs(setting: RefSetting) -> list[float]:
    """The lr of each epoch as RepDistiller's/mdistiller's ``adjust_learning_rate`` sets it
    (epochs counted from 1, decayed once ``epoch > milestone``)."""
    return [
        setting.lr * setting.rate ** sum(epoch > m for m in setting.milestones)
        for epoch in range(1, setting.epochs + 1)
    ]


# ---- mhkd's side ---------------------------------------------------------------------------------
def read(recipe: Path) -> tuple[cfg.RunConfig, dict[str, Any]]:
    config, notes = pipelines.read_recipe(recipe)
    return config, notes.get("paper", {})


def make_batch(seed: int, num_classes: int, num_samples: int, size: int = BATCH) -> Batch:
    """A fixed batch: normalised-looking images, labels and distinct data-set indices."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 32, 32, generator=g)
    labels = torch.randint(0, num_classes, (size,), generator=g)
    indices = torch.randperm(num_samples, generator=g)[:size]
    return Batch(images, labels, indices)


def contrast_indices(batch: Batch, negatives: int, num_samples: int, seed: int) -> torch.Tensor:
    """CRD's ``contrast_idx`` (each sample's own index, then its negatives), fixed for both sides:
    the samplers draw at random, so parity needs the same draw on both."""
    g = torch.Generator().manual_seed(seed)
    drawn = torch.randint(0, num_samples, (len(batch.indices), negatives), generator=g)
    return torch.cat([batch.indices.view(-1, 1), drawn], dim=1)


def perturb_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Seeded BN affine values, and running statistics measured on seeded images, so an
    eval-mode teacher of random weights neither collapses nor explodes (a collapsed one makes
    relation losses such as RKD ill-conditioned, amplifying float32 rounding)."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
        model.train()(torch.randn(BATCH, 3, 32, 32, generator=g))
        for m in norms:
            m.momentum = 0.1
    return model


def seeded_model(arch: str, num_classes: int, seed: int) -> nn.Module:
    """A zoo model with weights made by mhkd's own code from ``seed``."""
    torch.manual_seed(seed)
    return perturb_batchnorm(models.create(arch, num_classes=num_classes), seed + 1)


def run_methods(run: cfg.RunConfig, teacher: nn.Module | None, student: nn.Module) -> MethodSet:
    """The run's methods with the extras :func:`mhkd.api.loss_terms` builds (same seed, same
    context), for the SGD step that ``loss_terms`` does not take."""
    num_classes, num_samples = DATA[run.data.name]
    ctx = MethodContext(
        student=student, teacher=teacher, num_classes=num_classes,
        num_samples=num_samples, epochs=run.schedule.epochs, input_shape=(3, 32, 32),
    )  # fmt: skip
    set_seed(run.runtime.seed)
    return build_methods(run, ctx, torch.device("cpu"))[0]


def make_step(run: cfg.RunConfig, teacher, student, methods: MethodSet) -> DistillStep:
    """mhkd's own training step for the recipe (fp32 on the CPU, as the comparison needs)."""
    weights = {**methods.weights, **run.weights}
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    forward = DistillForward(student, methods, teacher)
    params = (p for p in forward.parameters() if p.requires_grad)
    optimizer, scheduler = optim.sgd(params, run.optim, run.schedule)
    trained = Trained(student, None, torch.device("cpu"), "fp32", BATCH, False)  # no summary
    return DistillStep(forward, optimizer=optimizer, scheduler=scheduler, weights=weights,
                       trained=trained)  # fmt: skip


@contextlib.contextmanager
def fixed_crd_draw(contrast_idx: torch.Tensor | None):
    """CRD draws its negatives at random; serve both sides the same ``contrast_idx``."""
    if contrast_idx is None:
        yield
        return
    original = ContrastMemory.sample
    ContrastMemory.sample = lambda self, indices, labels=None: contrast_idx.to(indices.device)
    try:
        yield
    finally:
        ContrastMemory.sample = original


def our_step(step: DistillStep, batch: Batch, epochs: int) -> dict[str, Any]:
    """One training step of mhkd: weighted terms, total, student gradients, then the lr of
    every epoch as the step's own scheduler sets it."""
    step.start_epoch(0)
    out = step(batch)
    terms = {k: float(step.weights[k] * v.detach()) for k, v in out.terms.items()}
    grads = {
        k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for k, p in step.student.named_parameters()
    }
    state = {k: v.detach().clone() for k, v in step.student.state_dict().items()}
    lrs = []
    for _ in range(epochs):
        lrs.append(step.optimizer.param_groups[0]["lr"])
        step.end_epoch()
    return {"step_terms": terms, "grads": grads, "state": state, "lrs": lrs}


def distill_stage(run: cfg.RunConfig, teacher, student, folder: Path) -> cfg.RunConfig:
    """The configuration of a recipe's distillation stage: the recipe itself, or, after a
    pre-training stage (AB, FSP, FT; :mod:`mhkd.pipelines.pretrain`), its stage 2 — AB and
    FSP train with CE alone, FT reads the paraphraser from ``folder`` (written here: the one
    stage 1 starts from, built from the run's seed; the reference gets a copy)."""
    name = pretraining_method(run)
    if name is None or not PRETRAINED[name]:
        return run if name is None else _stage_two_config(run, name, None)
    stage_one = _stage_one_config(run, name)
    methods = run_methods(stage_one, copy.deepcopy(teacher), copy.deepcopy(student))
    path = paraphraser_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = methods.methods[name].paraphraser.state_dict()
    checkpoint.save({"format": checkpoint.MODEL_FORMAT, "paraphraser": state}, path)
    return _stage_two_config(run, name, folder)


def run_ours(
    run: cfg.RunConfig, teacher, student, batch, contrast_idx=None, extras=None, stage_one=False
):
    """mhkd's side: the terms from :func:`mhkd.api.loss_terms` (on copies: its train-mode
    forward moves BN statistics), then one step of :class:`~mhkd.distill.DistillStep` with
    the same extras; ``extras(methods)`` may copy those to the reference first. A recipe with
    a pre-training stage runs its distillation stage (:func:`distill_stage`)."""
    if stage_one:  # the pre-training stage's own configuration, as given
        return _run_ours(run, teacher, student, batch, contrast_idx, extras)
    with tempfile.TemporaryDirectory() as tmp:
        run = distill_stage(run, teacher, student, Path(tmp))
        return _run_ours(run, teacher, student, batch, contrast_idx, extras)


def _run_ours(run: cfg.RunConfig, teacher, student, batch, contrast_idx, extras):
    num_classes, num_samples = DATA[run.data.name]
    with fixed_crd_draw(contrast_idx):
        terms = api.loss_terms(
            run, teacher=copy.deepcopy(teacher), student=copy.deepcopy(student),
            images=batch.images, labels=batch.labels, indices=batch.indices,
            num_classes=num_classes, num_samples=num_samples,
        )  # fmt: skip
        methods = run_methods(run, teacher, student)
        if extras is not None:
            extras(methods)
        step = make_step(run, teacher, student, methods)
        result = our_step(step, batch, run.schedule.epochs)
    total = float(terms.pop("total").detach())
    result["terms"] = {k: float(v.detach()) for k, v in terms.items()}
    result["total"] = total
    result["methods"] = methods
    step_terms = result["step_terms"]
    result["consistent"] = set(step_terms) == set(result["terms"]) and all(
        math.isclose(step_terms[k], v, rel_tol=1e-6, abs_tol=1e-9)
        for k, v in result["terms"].items()
    )
    return result


# ---- the reference side --------------------------------------------------------------------------
class Reference:
    """The reference code, imported from the checkouts given."""

    def __init__(self, repdistiller: Path, mdistiller: Path | None):
        sys.path.insert(0, str(repdistiller))
        with contextlib.redirect_stdout(io.StringIO()):
            self.rd_models = importlib.import_module("models").model_dict
            self.zoo = importlib.import_module("distiller_zoo")
            self.util = importlib.import_module("models.util")
            self.crd = importlib.import_module("crd.criterion")
            memory = importlib.import_module("crd.memory")
        memory.AliasMethod.cuda = lambda self: None  # the sampler moves itself to a GPU
        self.md = None
        if mdistiller is not None:
            sys.path.insert(0, str(mdistiller))
            importlib.import_module("mdistiller.distillers")
            self.md = SimpleNamespace(
                dkd=sys.modules["mdistiller.distillers.DKD"],
                models=importlib.import_module("mdistiller.models.cifar").cifar_model_dict,
            )

    def model(self, arch: str, num_classes: int, code: str) -> nn.Module:
        name = REF_NAMES.get(arch, arch)
        with contextlib.redirect_stdout(io.StringIO()):  # MobileNetV2 prints on construction
            if code == "mdistiller":
                return self.md.models[name][0](num_classes=num_classes)
            return self.rd_models[name](num_classes=num_classes)

    def criterion(self, setting: RefSetting, t, s, num_samples: int):
        """train_student.py's criterion_kd and the modules it adds to trainable_list."""
        d = setting.distill
        if d in ("ce", "kd", "dkd", "abound", "fsp"):  # AB, FSP: no loss after pre-training
            return None, []
        t.eval(), s.eval()
        x = torch.randn(2, 3, 32, 32)
        feat_t, _ = t(x, is_feat=True)
        feat_s, _ = s(x, is_feat=True)
        z = self.zoo
        if d == "hint":
            reg = self.util.ConvReg(feat_s[2].shape, feat_t[2].shape)
            return z.HintLoss(), [reg]
        if d == "abound_init":  # helper/pretrain.py: connectors on preact feat[1:-1]
            shapes = [[f.shape for f in feats[1:-1]] for feats in (feat_s, feat_t)]
            return z.ABLoss(len(shapes[0])), [self.util.Connector(*shapes)]
        if d == "fsp_init":
            return z.FSP([f.shape for f in feat_s[:-1]], [f.shape for f in feat_t[:-1]]), []
        if d == "vid":
            pairs = zip(feat_s[1:-1], feat_t[1:-1], strict=True)
            crit = nn.ModuleList(z.VIDLoss(s.shape[1], t.shape[1], t.shape[1]) for s, t in pairs)
            return crit, [crit]  # trainable, as train_student.py adds it to trainable_list
        if d == "factor":  # the paraphraser is not trained in this stage: kept on the criterion
            crit = z.FactorTransfer()
            crit.paraphraser = self.util.Paraphraser(feat_t[-2].shape)
            return crit, [self.util.Translator(feat_s[-2].shape, feat_t[-2].shape)]
        if d == "correlation":
            es = self.util.LinearEmbed(feat_s[-1].shape[1], 128)
            et = self.util.LinearEmbed(feat_t[-1].shape[1], 128)
            return z.Correlation(), [es, et]
        if d == "crd":
            opt = SimpleNamespace(
                s_dim=feat_s[-1].shape[1], t_dim=feat_t[-1].shape[1], feat_dim=128,
                n_data=num_samples, nce_k=16384, nce_t=0.07, nce_m=0.5,
            )  # fmt: skip
            crit = self.crd.CRDLoss(opt)
            return crit, [crit.embed_s, crit.embed_t]
        crit = {"attention": z.Attention, "similarity": z.Similarity, "rkd": z.RKDLoss,
                "pkt": z.PKT, "nst": z.NSTLoss}[d]()  # fmt: skip
        return crit, []

    def step(self, setting: RefSetting, t, s, crit, extras, batch, contrast_idx) -> dict:
        """One iteration of helper/loops.py's train_distill (or train_teacher's, or mdistiller's
        DKD trainer), with its SGD over trainable_list."""
        x, y, idx = batch.images, batch.labels, batch.indices
        init = setting.distill.endswith("_init")  # helper/pretrain.py: feature modules only
        params = [p for m in (s.get_feat_modules() if init else s, *extras) for p in m.parameters()]
        optimizer = torch.optim.SGD(
            params, lr=setting.lr, momentum=setting.momentum, weight_decay=setting.weight_decay
        )
        if setting.distill == "dkd":
            terms = self._dkd(setting, t, s, x, y)
        elif setting.distill == "ce":
            s.train()
            terms = {"ce": setting.gamma * F.cross_entropy(s(x), y)}
        else:
            terms = self._distill(setting, t, s, crit, extras, x, y, idx, contrast_idx)
        total = sum(terms.values())
        optimizer.zero_grad()
        total.backward()
        grads = {
            k: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for k, p in s.named_parameters()
        }
        optimizer.step()
        return {"terms": {k: float(v) for k, v in terms.items()}, "total": float(total),
                "grads": grads, "lrs": reference_lrs(setting)}  # fmt: skip

    def _distill(self, setting, t, s, crit, extras, x, y, idx, contrast_idx):
        for m in (s, *extras):
            m.train()
        t.eval()
        d = setting.distill
        if d.endswith("_init"):  # helper/pretrain.py: model_s.eval(), feature modules train()
            s.eval()
            s.get_feat_modules().train()
        feat_s, logit_s = s(x, is_feat=True, preact=d == "abound_init")
        with torch.no_grad():
            feat_t, logit_t = t(x, is_feat=True, preact=d == "abound_init")
            feat_t = [f.detach() for f in feat_t]
        if d == "abound_init":  # the pre-training stage's loss alone
            return {"ab": sum(crit(extras[0](feat_s[1:-1]), feat_t[1:-1]))}
        if d == "fsp_init":
            return {"fsp": sum(crit(feat_s[:-1], feat_t[:-1]))}
        loss_cls = F.cross_entropy(logit_s, y)
        loss_div = self.zoo.DistillKL(4)(logit_s, logit_t)
        if d in ("kd", "abound", "fsp"):  # AB, FSP: "can not use after pretraining"
            loss_kd = 0
        elif d == "vid":
            loss_kd = sum(c(a, b) for a, b, c in zip(feat_s[1:-1], feat_t[1:-1], crit, strict=True))
        elif d == "factor":
            crit.paraphraser.train()
            loss_kd = crit(extras[0](feat_s[-2]), crit.paraphraser(feat_t[-2], is_factor=True))
        elif d == "hint":
            loss_kd = crit(extras[0](feat_s[2]), feat_t[2])
        elif d == "crd":
            with contextlib.redirect_stdout(io.StringIO()):
                loss_kd = crit(feat_s[-1], feat_t[-1], idx, contrast_idx)
        elif d in ("attention", "nst"):
            loss_kd = sum(crit(feat_s[1:-1], feat_t[1:-1]))
        elif d == "similarity":
            loss_kd = sum(crit([feat_s[-2]], [feat_t[-2]]))
        elif d == "correlation":
            loss_kd = crit(extras[0](feat_s[-1]), extras[1](feat_t[-1]))
        else:  # rkd, pkt
            loss_kd = crit(feat_s[-1], feat_t[-1])
        name = {"hint": "fitnet", "attention": "at", "similarity": "sp", "correlation": "cc",
                "factor": "ft", "abound": "ab"}  # fmt: skip
        terms = {"ce": setting.gamma * loss_cls, "kd": setting.alpha * loss_div}
        if d != "kd":
            kd_term = setting.beta * loss_kd
            terms[name.get(d, d)] = kd_term.reshape(()) if torch.is_tensor(kd_term) else kd_term
        return terms

    def _dkd(self, setting, t, s, x, y):
        c = setting.dkd
        cfg_ns = SimpleNamespace(DKD=SimpleNamespace(**c))
        distiller = self.md.dkd.DKD(s, t, cfg_ns)
        distiller.train()
        _, losses = distiller.forward_train(image=x, target=y, epoch=1)
        return {"ce": losses["loss_ce"], "dkd": losses["loss_kd"]}


# ---- weights across the two sides ----------------------------------------------------------------
def key_map(ref_model: nn.Module, arch: str) -> dict[str, str]:
    """Reference state_dict key -> mhkd key, as mhkd's foreign loader renames them."""
    sd = ref_model.state_dict()
    _, _, renamed = to_mhkd(sd, REF_NAMES.get(arch, arch))
    ids = {id(v): k for k, v in renamed.items()}
    return {k: ids[id(v)] for k, v in sd.items()}


def load_through_mhkd(ref_model: nn.Module, arch: str, folder: Path) -> nn.Module:
    """Save the reference model as RepDistiller does and read it with mhkd's loader."""
    name = REF_NAMES.get(arch, arch)
    path = folder / f"{name}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 240, "model": ref_model.state_dict()}, path)
    model, _ = load_model(path, arch=name)
    return model


def push_to_reference(ours: nn.Module, ref_model: nn.Module, arch: str) -> None:
    """Load an mhkd model's weights into the reference model (record mode: mhkd seeds them)."""
    mapping = key_map(ref_model, arch)
    ours_sd = ours.state_dict()
    ref_model.load_state_dict({k: ours_sd[v] for k, v in mapping.items()})


def positional(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state keyed by position: VID's regressors and FT's paraphraser and translator
    register the same tensors in the same order on both sides, under other names."""
    return {str(i): v for i, v in enumerate(module.state_dict().values())}


def renamed_pairs(methods: MethodSet, extras: list[nn.Module], crit) -> list[tuple]:
    """(mhkd module, reference module) pairs whose states match by position (VID, FT)."""
    pairs = []
    if "vid" in methods.methods:
        pairs += list(zip(methods.methods["vid"].regressors, extras[0], strict=True))
    if "ab" in methods.methods and extras:
        pairs += list(zip(methods.methods["ab"].connectors, extras[0].connectors, strict=True))
    if "ft" in methods.methods:
        ft = methods.methods["ft"]
        pairs += [(ft.translator, extras[0]), (ft.paraphraser, crit.paraphraser)]
    return pairs


def same_named_pairs(methods: MethodSet, extras: list[nn.Module], crit) -> list[tuple]:
    """(mhkd module, reference module) pairs whose state dicts share their keys: FitNet's
    regressor, CC's and CRD's embeddings."""
    pairs = []
    if "fitnet" in methods.methods:
        pairs.append((methods.methods["fitnet"].regressors[0], extras[0]))
    if "cc" in methods.methods:
        cc = methods.methods["cc"]
        pairs += [(cc.embed, extras[0].linear), (cc.embed_t, extras[1].linear)]
    if "crd" in methods.methods:
        crd = methods.methods["crd"]
        pairs += [(crd.embed_s.linear, crit.embed_s.linear),
                  (crd.embed_t.linear, crit.embed_t.linear)]  # fmt: skip
    return pairs


def copy_extras(methods: MethodSet, extras: list[nn.Module], crit, to_reference: bool) -> None:
    """FitNet's regressor, CC's and CRD's embeddings and CRD's banks, VID's regressors and
    variances, FT's translator and paraphraser, one way or the other."""
    for ours, ref in renamed_pairs(methods, extras, crit):
        src, dst = (positional(ours), positional(ref))
        if not to_reference:
            src, dst = dst, src
        shapes = [v.shape for v in src.values()], [v.shape for v in dst.values()]
        if shapes[0] != shapes[1]:
            raise RuntimeError(f"cannot copy {type(ours).__name__}: shapes {shapes}")
        with torch.no_grad():
            for k, v in src.items():
                dst[k].copy_(v)
    if "crd" in methods.methods:
        crd = methods.methods["crd"]
        banks = ((crd.memory.student_bank, crit.contrast.memory_v1),
                 (crd.memory.teacher_bank, crit.contrast.memory_v2))  # fmt: skip
        with torch.no_grad():
            for ours, ref in banks:
                (ref if to_reference else ours).copy_(ours if to_reference else ref)
    for ours, ref in same_named_pairs(methods, extras, crit):
        src, dst = (ours, ref) if to_reference else (ref, ours)
        missing = dst.load_state_dict(src.state_dict(), strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            raise RuntimeError(f"cannot copy {type(src).__name__}: {missing}")


def _extra_pairs(methods: MethodSet, extras: list[nn.Module], crit) -> list[tuple[dict, dict]]:
    """(mhkd state, reference state) of every learned module and CRD's banks."""
    states = [(o.state_dict(), r.state_dict()) for o, r in same_named_pairs(methods, extras, crit)]
    states += [(positional(o), positional(r)) for o, r in renamed_pairs(methods, extras, crit)]
    if "crd" in methods.methods:
        crd = methods.methods["crd"]
        crd.memory.flush()
        states.append((
            {"s": crd.memory.student_bank, "t": crd.memory.teacher_bank},
            {"s": crit.contrast.memory_v1, "t": crit.contrast.memory_v2},
        ))  # fmt: skip
    return states


def extras_after(pairs: list[tuple[dict, dict]], before: list[dict]) -> float:
    """Largest difference of each learned module (and CRD's banks) after the step, over the
    largest change the reference step made to that module."""
    diffs = [0.0]
    for (ours, ref), old in zip(pairs, before, strict=True):
        if not ref:  # an identity connector
            continue
        change = max((v - old[k]).abs().max().item() for k, v in ref.items())
        diff = max(beyond_rounding(ours[k], v) for k, v in ref.items())
        diffs.append(diff / (change or 1.0))
    return max(diffs)


# ---- one recipe ----------------------------------------------------------------------------------
@dataclass
class Row:
    recipe: str
    ours: dict[str, float] = field(default_factory=dict)
    ref: dict[str, float] = field(default_factory=dict)
    term_diff: float = math.nan
    grad_diff: float = math.nan
    param_diff: float = math.nan
    lr_equal: bool = False
    settings_equal: bool = False
    consistent: bool = True  # loss_terms and DistillStep agree on mhkd's side
    note: str = ""

    @property
    def equal(self) -> bool:
        return (
            self.lr_equal and self.settings_equal and self.consistent
            and self.term_diff <= TERM_TOL and max(self.grad_diff, self.param_diff) <= STEP_TOL
        )  # fmt: skip


def settings_equal(run: cfg.RunConfig, setting: RefSetting) -> bool:
    o, s = run.optim, run.schedule
    return (
        (o.batch_size, o.momentum, o.weight_decay, s.epochs, s.kind)
        == (setting.batch_size, setting.momentum, setting.weight_decay, setting.epochs, "multistep")
        and math.isclose(o.lr, setting.lr) and math.isclose(s.gamma, setting.rate)
    )  # fmt: skip


def ours_lrs(run: cfg.RunConfig) -> list[float]:
    """The lr of each epoch (from 0) as mhkd's DistillStep schedules it (any student will do)."""
    student = nn.Linear(2, 2)
    methods = MethodSet("ce", MethodContext(student=student, teacher=None, num_classes=2))
    step = make_step(run, None, student, methods)
    lrs = []
    for _ in range(run.schedule.epochs):
        lrs.append(step.optimizer.param_groups[0]["lr"])
        step.end_epoch()
    return lrs


def lrs_equal(a: list[float], b: list[float]) -> bool:
    if len(a) != len(b):
        return False
    return all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b, strict=True))


#: Pre-training stages compared step by step (FT's trains a paraphraser, not the student).
STAGE_ONE = {"ab": "abound", "fsp": "fsp"}


def stage_one(run: cfg.RunConfig, setting: RefSetting) -> tuple[cfg.RunConfig, RefSetting]:
    """The pre-training stage on both sides: mhkd's stage-1 configuration; the reference's
    ``helper/pretrain.py`` (the method's loss alone, weight 1, ``opt.learning_rate``
    constant for ``init_epochs`` = 30, SGD over the student's feature modules and the
    connectors)."""
    name = pretraining_method(run)
    ref = dataclasses.replace(setting, distill=f"{STAGE_ONE[name]}_init", gamma=0.0, alpha=0.0,
                              beta=1.0, epochs=30, milestones=[])  # fmt: skip
    return _stage_one_config(run, name), ref


def compare(path: Path, ref: Reference, mdistiller: Path | None, seed: int = 0,
            pretraining: bool = False) -> Row:  # fmt: skip
    """One recipe on weights the reference code initialised, read into mhkd through its
    foreign-checkpoint loader (``pretraining``: its pre-training stage's step instead)."""
    run, paper = read(path)
    setting = reference_setting(run, paper.get("reference", ""), mdistiller)
    name = path.stem
    if pretraining:
        run, setting, name = *stage_one(run, setting), f"{path.stem} (pre-training step)"
    row = Row(name, settings_equal=settings_equal(run, setting))
    if setting.code is None:
        row.lr_equal = lrs_equal(ours_lrs(run), reference_lrs(setting))
        return row
    num_classes, _ = DATA[run.data.name]
    torch.manual_seed(seed)
    s_ref = perturb_batchnorm(ref.model(run.models.student, num_classes, setting.code), seed + 1)
    t_ref = None
    if run.method != "ce":
        arch = run.models.teacher_arch
        t_ref = perturb_batchnorm(ref.model(arch, num_classes, setting.code), seed + 2)
    with tempfile.TemporaryDirectory() as tmp:
        student = load_through_mhkd(s_ref, run.models.student, Path(tmp) / "s")
        teacher = None
        if t_ref is not None:
            teacher = load_through_mhkd(t_ref, run.models.teacher_arch, Path(tmp) / "t")
    return both_sides(row, run, setting, ref, (student, teacher), (s_ref, t_ref), seed)[0]


def both_sides(row: Row, run, setting: RefSetting, ref: Reference, ours_models, ref_models, seed):
    """Run mhkd's and the reference's step on one batch and fill ``row``; the learned modules
    are mhkd's (built from the run's seed) copied into the reference."""
    (student, teacher), (s_ref, t_ref) = ours_models, ref_models
    _, num_samples = DATA[run.data.name]
    crit, extras = ref.criterion(setting, t_ref, s_ref, num_samples)
    batch = make_batch(seed, DATA[run.data.name][0], num_samples)
    cidx = contrast_indices(batch, 16384, num_samples, seed) if setting.distill == "crd" else None

    def give_extras(methods: MethodSet) -> None:
        copy_extras(methods, extras, crit, to_reference=True)

    init = setting.distill.endswith("_init")
    ours = run_ours(run, teacher, student, batch, cidx, give_extras, stage_one=init)
    before = {k: v.detach().clone() for k, v in s_ref.state_dict().items()}
    extras_before = [
        {k: v.detach().clone() for k, v in ref_state.items()}
        for _, ref_state in _extra_pairs(ours["methods"], extras, crit)
    ]
    theirs = ref.step(setting, t_ref, s_ref, crit, extras, batch, cidx)
    mapping = key_map(s_ref, run.models.student)
    skip = BN_QUIRKS.get((setting.code, run.models.student), ())
    if skip:
        row.note = (
            f"{setting.code}'s {run.models.student} re-runs BNs {', '.join(s[:-1] for s in skip)} "
            "in its forward: their running statistics move twice per step (not compared)"
        )
    fill(row, ours, theirs, mapping, s_ref, before, skip)
    row.lr_equal = lrs_equal(ours["lrs"], theirs["lrs"])
    extra = extras_after(_extra_pairs(ours["methods"], extras, crit), extras_before)
    row.param_diff = max(row.param_diff, extra)
    row.consistent = ours["consistent"]
    return row, theirs, mapping


def beyond_rounding(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |ours − ref| beyond two float32 ulps of the value (a small lr moves weights by
    a few ulps, so rounding alone would otherwise dominate the relative measure)."""
    a, b = ours.double(), ref.double()
    slack = 2 * torch.finfo(torch.float32).eps * b.abs() if ref.is_floating_point() else 0.0
    return ((a - b).abs() - slack).clamp(min=0).max().item()


def relative_step_diff(
    ours: dict, after: dict, before: dict, mapping: dict[str, str], skip: tuple[str, ...] = ()
) -> float:
    """max |after_ours − after_ref| over the largest change the reference step made; BN
    running statistics of the layers in ``skip`` (a known reference quirk) left out."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    keys = [k for k in after if not (skip and k.startswith(skip) and k.endswith(buffers))]
    change = max((after[k].double() - before[k].double()).abs().max().item() for k in keys)
    diff = max(beyond_rounding(ours[mapping[k]], after[k]) for k in keys)
    return diff / (change or 1.0)


def fill(row: Row, ours: dict, theirs: dict, mapping: dict[str, str], s_ref, before, skip=()):
    """Terms (relative to max(1, |term|)), gradients (relative to the largest reference
    gradient) and the weights after the step (relative to the largest change)."""
    row.ours, row.ref = ours["terms"], theirs["terms"]
    names = set(row.ours) | set(row.ref)
    pairs = [(row.ours.get(k, 0.0), row.ref.get(k, 0.0)) for k in names]
    pairs.append((ours["total"], theirs["total"]))
    row.term_diff = max(abs(a - b) / max(1.0, abs(b)) for a, b in pairs)
    grad_scale = max(g.abs().max().item() for g in theirs["grads"].values()) or 1.0
    row.grad_diff = max(
        (ours["grads"][mapping[k]] - g).abs().max().item() / grad_scale
        for k, g in theirs["grads"].items()
    )
    row.param_diff = relative_step_diff(ours["state"], s_ref.state_dict(), before, mapping, skip)


# ---- record mode: reference figures on weights mhkd seeds ----------------------------------------
def seeded_models(run: cfg.RunConfig, seed: int) -> tuple[nn.Module, nn.Module | None]:
    num_classes, _ = DATA[run.data.name]
    student = seeded_model(run.models.student, num_classes, seed)
    teacher = None
    if run.method != "ce":
        teacher = seeded_model(run.models.teacher_arch, num_classes, seed + 10)
    return student, teacher


def record(path: Path, ref: Reference, mdistiller: Path | None, seed: int = 0) -> dict:
    """The reference's numbers on weights made by mhkd's code (see :func:`seeded_model`)."""
    run, paper = read(path)
    setting = reference_setting(run, paper.get("reference", ""), mdistiller)
    num_classes, _ = DATA[run.data.name]
    student, teacher = seeded_models(run, seed)
    s_ref = ref.model(run.models.student, num_classes, setting.code)
    push_to_reference(student, s_ref, run.models.student)
    t_ref = None
    if teacher is not None:
        t_ref = ref.model(run.models.teacher_arch, num_classes, setting.code)
        push_to_reference(teacher, t_ref, run.models.teacher_arch)
    before = {k: v.detach().double().clone() for k, v in s_ref.state_dict().items()}
    row = Row(path.stem, settings_equal=settings_equal(run, setting))
    row, theirs, mapping = both_sides(
        row, run, setting, ref, (student, teacher), (s_ref, t_ref), seed
    )
    if not row.equal:
        raise RuntimeError(f"{path.stem}: mhkd differs from the reference on seeded weights: {row}")
    return {
        "recipe": f"{path.parent.name}/{path.name}",
        "seed": seed,
        "batch": BATCH,
        "terms": theirs["terms"],
        "total": theirs["total"],
        "grad_norms": {mapping[k]: g.norm().item() for k, g in theirs["grads"].items()},
        "step_norms": {
            mapping[k]: (v.double() - before[k]).norm().item()
            for k, v in s_ref.state_dict().items()
        },
        "lr_changes": lr_changes(theirs["lrs"]),
        "reference": paper.get("reference", ""),
    }


def lr_changes(lrs: list[float]) -> list[list[float]]:
    """The lr schedule compactly: [epoch (from 1), lr] wherever it changes, and its length."""
    out = [[1, lrs[0]]]
    for epoch, (a, b) in enumerate(zip(lrs, lrs[1:], strict=False), start=2):
        if not math.isclose(a, b):
            out.append([epoch, b])
    return [*out, [len(lrs), lrs[-1]]]


def seeded_ours(recipe: Path, seed: int = 0) -> dict:
    """mhkd's side of :func:`record`, without the reference code (tests/test_parity.py)."""
    run, _ = read(recipe)
    _, num_samples = DATA[run.data.name]
    student, teacher = seeded_models(run, seed)
    batch = make_batch(seed, DATA[run.data.name][0], num_samples)
    crd = "crd" in run.method.split("+")
    cidx = contrast_indices(batch, 16384, num_samples, seed) if crd else None
    before = {k: v.detach().double().clone() for k, v in student.state_dict().items()}
    ours = run_ours(run, teacher, student, batch, cidx)
    ours["grad_norms"] = {k: g.norm().item() for k, g in ours["grads"].items()}
    ours["step_norms"] = {
        k: (v.double() - before[k]).norm().item() for k, v in ours["state"].items()
    }
    ours["lr_changes"] = lr_changes(ours["lrs"])
    return ours


def same_changes(a: list[list[float]], b: list[list[float]]) -> bool:
    """Two :func:`lr_changes` lists alike: the same epochs, lrs equal to rounding."""
    return len(a) == len(b) and all(
        x[0] == y[0] and math.isclose(x[1], y[1], rel_tol=1e-9) for x, y in zip(a, b, strict=True)
    )


def figure_differences(ours: dict, figures: dict) -> dict[str, float]:
    """How far mhkd's seeded step is from recorded reference figures (relative measures)."""
    names = set(ours["terms"]) | set(figures["terms"])
    pairs = [(ours["terms"].get(k, 0.0), figures["terms"].get(k, 0.0)) for k in names]
    pairs.append((ours["total"], figures["total"]))
    grads, ref_grads = ours["grad_norms"], figures["grad_norms"]
    scale = max(ref_grads.values()) or 1.0
    steps, ref_steps = ours["step_norms"], figures["step_norms"]
    step_scale = max(v for k, v in ref_steps.items() if "num_batches" not in k) or 1.0
    return {
        "terms": max(abs(a - b) / max(1.0, abs(b)) for a, b in pairs),
        "grads": max(abs(grads[k] - v) / scale for k, v in ref_grads.items()),
        "params": max(abs(steps[k] - v) / step_scale for k, v in ref_steps.items()),
        "keys": float(set(grads) != set(ref_grads) or set(steps) != set(ref_steps)),
        "lrs": float(not same_changes(ours["lr_changes"], figures["lr_changes"])),
    }


# ---- the table -----------------------------------------------------------------------------------
def recipes() -> list[Path]:
    """The CIFAR-100 and SVHN recipes (ImageNet and pruning have no CIFAR reference here)."""
    found = []
    for folder in ("baselines", "mhkd"):
        found += sorted((ROOT / "recipes" / folder).glob("*.yaml"))
    return [p for p in found if read(p)[0].data.name in DATA]


def fmt_terms(terms: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.6g}" for k, v in sorted(terms.items()))


def table(rows: list[Row]) -> str:
    """The Markdown table, its footnotes and the headline count."""
    head = (
        "| recipe | terms, mhkd (weighted) | terms, reference | term diff | grad diff "
        "| weights after step | lr every epoch | optimiser settings | equal |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines, notes = [], []
    for r in rows:
        mark = ""
        if r.note and r.ref:
            notes.append(r.note)
            mark = f" [{len(notes)}]"
        verdict = ("yes" if r.equal else "**no**") + mark if r.ref else "no reference code"
        cells = [
            r.recipe, fmt_terms(r.ours) or "—", fmt_terms(r.ref) or "—",
            f"{r.term_diff:.1e}", f"{r.grad_diff:.1e}", f"{r.param_diff:.1e}",
            "equal" if r.lr_equal else "**differs**",
            "equal" if r.settings_equal else "**differ**", verdict,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    stages = [r for r in rows if r.recipe.endswith("(pre-training step)")]
    compared = [r for r in rows if r.ref and r not in stages]
    others = [r for r in rows if not r.ref]
    footnotes = "".join(f"\n[{i}] {n}." for i, n in enumerate(notes, 1))
    summary = (
        f"\n**{sum(r.equal for r in compared)}/{len(compared)} recipes equal the reference**, "
        f"and {sum(r.equal for r in stages)}/{len(stages)} pre-training steps (AB, FSP). "
        f"{len(others)} more have no reference code (MHKD, CRD+MHKD and the SVHN CE runs: the "
        "MHKD authors published none); their optimiser settings and lr of every epoch match "
        f"the reference rule in {sum(r.lr_equal and r.settings_equal for r in others)}/"
        f"{len(others)}.\n"
    )
    return head + "\n".join(lines) + "\n" + footnotes + "\n" + summary


def preamble(args: argparse.Namespace) -> str:
    """Where the figures come from: the command, the reference checkouts, the machine."""
    import platform
    import subprocess

    def commit(path: Path | None) -> str:
        if path is None:
            return "not given"
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown commit"

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    ) if Path("/proc/cpuinfo").is_file() else platform.processor()  # fmt: skip
    return (
        "Command: `python benchmarks/parity.py --repdistiller DIR --mdistiller DIR "
        "--out benchmarks/results/parity.md` (RepDistiller at "
        f"{commit(args.repdistiller)}, mdistiller at {commit(args.mdistiller)}). Machine: "
        f"{cpu}, torch {torch.__version__}, float32 on the CPU, one batch of {BATCH} seeded "
        "32×32 images per recipe.\n\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repdistiller", type=Path, required=True)
    parser.add_argument("--mdistiller", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    parser.add_argument("--record", type=Path, help="write reference figures for the subset here")
    parser.add_argument("--only", help="comma-separated recipe names (file stems)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ref = Reference(args.repdistiller, args.mdistiller)
    paths = recipes()
    if args.only:
        wanted = set(args.only.split(","))
        paths = [p for p in paths if p.stem in wanted]
    rows = []
    for path in paths:
        rows.append(compare(path, ref, args.mdistiller))
        if pretraining_method(read(path)[0]) in STAGE_ONE:
            rows.append(compare(path, ref, args.mdistiller, pretraining=True))
        for row in rows[-2:] if rows[-1].recipe != path.stem else rows[-1:]:
            verdict = ("equal" if row.equal else "DIFFERS") if row.ref else "no reference code"
            print(f"{row.recipe}: {verdict}")
    text = preamble(args) + table(rows)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.record:
        args.record.mkdir(parents=True, exist_ok=True)
        for stem in RECORD:
            path = next(p for p in recipes() if p.stem == stem)
            figures = record(path, ref, args.mdistiller)
            print(stem, figure_differences(seeded_ours(path), figures))
            (args.record / f"{stem}.json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if all(r.equal for r in rows if r.ref) else 1


if __name__ == "__main__":
    sys.exit(main())
