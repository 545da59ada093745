"""The method interface: what every distillation method provides to the training loop.

A method is an ``nn.Module`` that owns its trainable extras (heads, regressors, embeddings,
memory banks) and turns one step's student and teacher outputs into named loss terms. The
loop weights the terms, sums them and back-propagates; it knows nothing of any method.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mhkd.data.batch import Batch
from mhkd.methods.layers import probe


def option(default: Any = None, help: str = "", flag: str | None = None) -> Any:
    """A dataclass field carrying its command-line help (and a flag name other than its own).

    Method option dataclasses and the run configuration's sections declare their fields with
    it; :mod:`mhkd.config` generates the flags from them.
    """
    metadata = {"help": help, "flag": flag}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class TeacherUse(enum.IntEnum):
    """What a method reads of the teacher, decided when the method is built.

    Ordered: a set of methods needs the most any of them needs. ``OUTPUTS``: per-sample
    outputs of the frozen teacher only, its logits and what fixed modules compute from its
    features (:meth:`Method.cached_teacher_outputs`), which a teacher cache can serve exactly.
    ``FEATURES``: live teacher features every step (trainable modules read them).
    """

    NONE = 0
    OUTPUTS = 1
    FEATURES = 2


@dataclass
class NoOptions:
    """A method without options."""


class ModelOutput(NamedTuple):
    """A network's logits and the tapped intermediate outputs, keyed by layer name."""

    logits: Tensor
    features: dict[str, Tensor]


@dataclass
class MethodContext:
    """What a method may look at when it builds its extras.

    ``teacher_layers``/``student_layers`` are user-chosen layer names (``None``: the method
    picks defaults from the zoo models' ``stage_names``/``embedding_name``).
    """

    student: nn.Module
    teacher: nn.Module | None
    num_classes: int
    num_samples: int = 0
    epochs: int = 1
    input_shape: tuple[int, int, int] = (3, 32, 32)
    teacher_layers: Sequence[str] | None = None
    student_layers: Sequence[str] | None = None

    def student_shapes(self, names: Sequence[str]) -> dict[str, torch.Size]:
        """Per-sample output shapes of the named student layers (:func:`layers.probe`)."""
        return probe(self.student, names, self.input_shape).shapes

    def teacher_shapes(self, names: Sequence[str]) -> dict[str, torch.Size]:
        """Per-sample output shapes of the named teacher layers (:func:`layers.probe`)."""
        if self.teacher is None:
            raise ValueError("this method needs a teacher")
        return probe(self.teacher, names, self.input_shape).shapes


@dataclass(frozen=True)
class Trained:
    """The trained student as a method may judge it at the end of a run (:meth:`Method.report`):
    the model, the run's data and how the run evaluates (device, precision, batch, layout)."""

    student: nn.Module
    data: Any
    device: torch.device
    precision: str
    batch_size: int
    channels_last: bool


@dataclass
class Prefit:
    """A part of a method fitted by cross-entropy on the frozen teacher's features before
    training starts; the run builder runs it as a loop of its own over the run's data.

    ``logits`` maps the tapped ``teacher_layers`` to one or more predictions (each trained by
    CE, summed); ``finished`` is told each prediction's training accuracy (%) of the last
    epoch when the fit ends, and fixes the module.
    """

    name: str
    module: nn.Module
    teacher_layers: list[str]
    logits: Callable[[dict[str, Tensor]], list[Tensor]]
    epochs: int
    lr: float
    finished: Callable[[list[float]], None]


class Method(nn.Module):
    """Base class of distillation methods.

    A subclass states, as class attributes: ``name``; ``Options``, the dataclass of its
    options (its flags are generated from it as ``--NAME.FIELD``); ``ce_weight``, the weight
    it gives the label term; ``weights``, the default weight of every term ``forward``
    returns; ``companions``, methods that always run beside it (e.g. ``("kd",)``). Its
    ``__init__(ctx, options)`` passes ``teacher_use`` up, fills ``teacher_layers`` /
    ``student_layers`` with the layers it needs tapped, and it implements ``forward``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    ce_weight: ClassVar[float] = 1.0
    weights: ClassVar[dict[str, float]] = {}
    companions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, teacher_use: TeacherUse = TeacherUse.FEATURES):
        super().__init__()
        self.teacher_use = teacher_use
        self.teacher_layers: list[str] = []
        self.student_layers: list[str] = []

    def forward(  # type: ignore[override]
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Called before each epoch (from 0); returns scalars worth logging (schedules)."""
        return {}

    def prefit(self) -> Prefit | None:
        """What the method fits on the frozen teacher before the first epoch of a fresh run
        (never on resume), such as MHKD's teacher heads in prefit mode; ``None``: nothing.
        The result must live in the method's state, so a resumed run keeps it."""
        return None

    def cached_teacher_outputs(self, teacher: ModelOutput) -> dict[str, Tensor]:
        """Per-sample tensors a ``TeacherUse.OUTPUTS`` method computes from the teacher's tapped
        features with fixed modules, keyed by names of its own; a teacher cache stores them
        beside the logits and serves them back in ``teacher.features`` (default: none)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Extra fields for the run's ``summary.json`` (static facts: sizes, layer pairs)."""
        return {}

    def report(self, trained: Trained) -> dict[str, Any]:
        """Fields for ``summary.json`` measured on the trained student the way the method's
        paper judges it (information flow: retrieval mAP); default none."""
        return {}


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator that makes a method available by its ``name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> list[type[Method]]:
    """The registered method classes, in name order."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def available() -> list[str]:
    """Names of the registered methods (``ce`` is the plain label loss, no method)."""
    return ["ce", *sorted(_REGISTRY)]


def method_class(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; choose from {', '.join(available())} "
            "or a sum of them such as 'crd+mhkd'"
        ) from None


def expand(spec: str) -> list[str]:
    """Method names in a spec such as ``"crd+mhkd"``, companions first, each once."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split("+")):
        if part == "ce":
            continue
        cls = method_class(part)
        for name in (*cls.companions, part):
            if name not in names:
                names.append(name)
    return names


def default_weights(names: Sequence[str]) -> dict[str, float]:
    """The methods' default term weights, merged.

    The label term ``ce`` of a sum of methods takes the lowest ``ce_weight`` among them (1.0
    for plain cross-entropy): a method that mixes in KD's 0.1/0.9 split keeps it when combined
    with one that adds its term to a full CE (``kd+at``: 0.1 CE + 0.9 KD + 1000 AT).
    """
    weights: dict[str, float] = {}
    for name in names:
        for term, value in method_class(name).weights.items():
            weights.setdefault(term, value)
    ce = min((method_class(name).ce_weight for name in names), default=1.0)
    return {"ce": ce, **weights}


class MethodSet(nn.Module):
    """The methods of one run, called in turn; their loss terms are merged into one dict.

    ``options`` maps a method name to its options dataclass (absent: the defaults).
    """

    def __init__(self, spec: str, ctx: MethodContext, options: dict[str, Any] | None = None):
        super().__init__()
        options = options or {}
        self.spec = spec
        self.names = expand(spec)
        self.methods = nn.ModuleDict(
            {
                name: method_class(name)(ctx, options.get(name) or method_class(name).Options())
                for name in self.names
            }
        )
        self.weights = default_weights(self.names)

    @property
    def teacher_use(self) -> TeacherUse:
        return max((m.teacher_use for m in self.methods.values()), default=TeacherUse.NONE)

    def report(self, trained: Trained) -> dict[str, Any]:
        """Every method's measures of the trained student (see :meth:`Method.report`)."""
        extra: dict[str, Any] = {}
        for method in self.methods.values():
            extra.update(method.report(trained))
        return extra

    @property
    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(n for m in self.methods.values() for n in m.teacher_layers))

    def cached_teacher_outputs(self, teacher: ModelOutput) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        for method in self.methods.values():
            outputs.update(method.cached_teacher_outputs(teacher))
        return outputs

    @property
    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(n for m in self.methods.values() for n in m.student_layers))

    def forward(  # type: ignore[override]
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for name, method in self.methods.items():
            for term, value in method(student, teacher, batch).items():
                if term in terms:
                    raise RuntimeError(f"methods return the loss term {term!r} twice ({name})")
                terms[term] = value
        return terms

    def start_epoch(self, epoch: int) -> dict[str, float]:
        logged: dict[str, float] = {}
        for method in self.methods.values():
            logged.update(method.start_epoch(epoch))
        return logged

    def prefits(self) -> list[Prefit]:
        """What the methods fit before training (see :meth:`Method.prefit`)."""
        found = (method.prefit() for method in self.methods.values())
        return [prefit for prefit in found if prefit is not None]

    def summary(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for method in self.methods.values():
            extra.update(method.summary())
        return extra
