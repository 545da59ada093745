"""The method interface: what every distillation method provides to the training loop.

A method is an ``nn.Module`` that owns its trainable extras (heads, regressors, embeddings,
memory banks) and turns one step's student and teacher outputs into named loss terms. The
loop weights the terms, sums them and back-propagates; it knows nothing of any method.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mhkd.data.base import DataSplits
from mhkd.data.batch import Batch
from mhkd.taps import infer_shapes


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
    options: dict[str, Any] = field(default_factory=dict)
    #: The run directory, data splits and TrainConfig (``None`` outside a Trainer), for methods
    #: that train a model of their own before distillation, such as infoflow's proxy teacher.
    out: Path | None = None
    data: DataSplits | None = None
    config: Any = None

    def student_shapes(self, names: Sequence[str]) -> dict[str, torch.Size]:
        return infer_shapes(self.student, names, self.input_shape)

    def teacher_shapes(self, names: Sequence[str]) -> dict[str, torch.Size]:
        if self.teacher is None:
            raise ValueError("this method needs a teacher")
        return infer_shapes(self.teacher, names, self.input_shape)


class Method(nn.Module):
    """Base class of distillation methods.

    Subclasses set ``name``, ``weights`` (default weight of every loss term ``forward`` returns,
    and optionally ``"ce"`` to change the label term's weight) and ``companions`` (methods that
    always run beside this one, e.g. ``("kd",)``), fill ``teacher_layers``/``student_layers``
    with the layers they need tapped, and implement ``forward``.
    """

    name: ClassVar[str] = ""
    weights: ClassVar[dict[str, float]] = {}
    companions: ClassVar[tuple[str, ...]] = ()
    needs_teacher: ClassVar[bool] = True
    #: Which teacher outputs the method reads: "logits" lets the teacher's outputs be cached.
    teacher_inputs: ClassVar[str] = "features"

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.teacher_layers: list[str] = []
        self.student_layers: list[str] = []

    def forward(  # type: ignore[override]
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Called before each epoch (from 0); returns scalars worth logging (schedules)."""
        return {}

    def prepare(self, teacher: nn.Module | None, loader: Iterable[Batch]) -> None:
        """Called once before the first epoch of a fresh run (never on resume).

        For work that must precede distillation, such as pre-fitting heads on the frozen
        teacher; its results must live in the method's state so a resumed run keeps them.
        """

    def summary(self) -> dict[str, Any]:
        """Extra fields for the run's ``summary.json`` (e.g. the size of auxiliary heads)."""
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


def split_options(spec: str, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Give each method in ``spec`` the ``values`` its constructor takes.

    A value may reach several methods (``temperature`` goes to every one that takes it); a key
    that no method in the spec takes is an error, so typos do not pass silently.
    """
    options: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for name in expand(spec):
        params = set(inspect.signature(method_class(name).__init__).parameters) - {"self", "ctx"}
        options[name] = {k: v for k, v in values.items() if k in params}
        used.update(options[name])
    unused = sorted(set(values) - used)
    if unused:
        raise ValueError(f"option(s) {', '.join(unused)} are not taken by method {spec!r}")
    return options


def default_weights(names: Sequence[str]) -> dict[str, float]:
    """Merge the methods' default term weights.

    ``ce`` takes the smallest weight any method asks for (1.0 when none does): a method that
    mixes in KD lowers the label term, and ``kd+at`` keeps KD's 0.1/0.9 split.
    """
    weights: dict[str, float] = {}
    ce: list[float] = []
    for name in names:
        for term, value in method_class(name).weights.items():
            if term == "ce":
                ce.append(value)
            else:
                weights.setdefault(term, value)
    return {"ce": min(ce, default=1.0), **weights}


class MethodSet(nn.Module):
    """The methods of one run, called in turn; their loss terms are merged into one dict."""

    def __init__(self, spec: str, ctx: MethodContext, options: dict[str, dict] | None = None):
        super().__init__()
        options = options or {}
        self.spec = spec
        self.names = expand(spec)
        self.methods = nn.ModuleDict(
            {name: method_class(name)(ctx, **options.get(name, {})) for name in self.names}
        )
        self.weights = default_weights(self.names)

    @property
    def needs_teacher(self) -> bool:
        return any(m.needs_teacher for m in self.methods.values())

    @property
    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(n for m in self.methods.values() for n in m.teacher_layers))

    @property
    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(n for m in self.methods.values() for n in m.student_layers))

    @property
    def teacher_inputs(self) -> str:
        kinds = {m.teacher_inputs for m in self.methods.values() if m.needs_teacher}
        return "logits" if kinds <= {"logits"} else "features"

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

    def prepare(self, teacher: nn.Module | None, loader: Iterable[Batch]) -> None:
        for method in self.methods.values():
            method.prepare(teacher, loader)

    def summary(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for method in self.methods.values():
            extra.update(method.summary())
        return extra
