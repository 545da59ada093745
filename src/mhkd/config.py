"""The one configuration tree of a run, read from YAML, overridden by flags, written back.

A run is described by :class:`RunConfig`: data, models, methods (each with its own options
dataclass, see :mod:`mhkd.methods`), loss weights, optimisation, schedule and runtime. Recipes
are this tree in YAML, the CLI generates one flag per field (method options namespaced as
``--mhkd.beta``, so no two methods can clash), the API builds it from keywords, and
``config.yaml`` in the run directory is the resolved tree.

The flags of the core sections are flat (``--lr``, ``--epochs``, ``--data-dir``): field names
are unique across those sections, which :func:`add_flags` checks. Flags default to "not given",
so a flag overrides a recipe value only when it is on the command line.

Why not jsonargparse/OmegaConf/tyro: each would generate ``--optim.lr``-style names (or need
per-field renames that cost as much as this module) for the flat flags users know, and none
turns a bad recipe value into the one-line ``FILE: key: problem`` error this project promises;
the whole mapping here is ~250 lines with no new dependency.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mhkd.methods.base import default_weights, expand, method_class, option

#: The CIFAR recipes decay the learning rate at epochs 150, 180 and 210 of 240.
PAPER_MILESTONE_FRACTIONS = (0.625, 0.75, 0.875)


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


# ---- the sections -----------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Which data set, where its files are and how it is cut and augmented."""

    name: str = option(
        "cifar100",
        "data set (see `mhkd models`/README: cifar10, cifar100, svhn, "
        "imagefolder, imagenet, digits, synthetic)",
        flag="data",
    )
    dir: str | None = option(
        None, "where the data set's files are (or are downloaded)", flag="data-dir"
    )
    image_size: int | None = option(None, "image side for digits and imagefolder")
    train_per_class: int | None = option(
        None, "train on a seeded, class-balanced subset of N labelled images per class"
    )
    augment: bool = option(True, "random crop and flip while training")
    workers: int | None = option(
        None, "decoding processes of a streamed data set (default: min(8, CPUs))"
    )
    streaming: bool | None = option(
        None, "stream files from disk instead of holding the set in memory (default: by size)"
    )
    skip_bad_images: bool = option(
        False, "skip unreadable images of a streamed set (counted) instead of stopping"
    )


@dataclass
class ModelsConfig:
    """The student (a zoo name or checkpoint) and the teacher checkpoint, with tapped layers."""

    student: str | None = option(None, "zoo model name (or checkpoint) of the student")
    teacher: str | None = option(
        None, "teacher checkpoint (.pt; RepDistiller/mdistiller files too)"
    )
    teacher_arch: str | None = option(
        None,
        "the teacher checkpoint's architecture when the file does not say (foreign checkpoints)",
    )
    teacher_layers: list[str] | None = option(None, "teacher layer names, a,b,c")
    student_layers: list[str] | None = option(None, "student layer names, a,b,c")


@dataclass
class OptimConfig:
    """SGD and batch sizes. Defaults follow the CIFAR distillation benchmark."""

    batch_size: int = option(64, "global batch size (split over torchrun processes)")
    eval_batch_size: int = option(512, "batch size of evaluation")
    lr: float = option(0.05, "initial learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay")
    nesterov: bool = option(False, "Nesterov momentum")


@dataclass
class ScheduleConfig:
    """Epochs and the learning-rate schedule (multistep: x gamma at each milestone)."""

    epochs: int = option(240, "training epochs")
    kind: Literal["multistep", "cosine"] = option(
        "multistep", "learning-rate schedule", flag="schedule"
    )
    milestones: list[int] | None = option(
        None, "epochs at which the lr drops (default: 62.5/75/87.5%% of --epochs)"
    )
    gamma: float = option(0.1, "lr factor at each milestone")

    def resolved_milestones(self) -> list[int]:
        if self.milestones is not None:
            return list(self.milestones)
        # a short run's fractions can round onto one epoch: decay there once, not twice
        return sorted({max(1, round(self.epochs * f)) for f in PAPER_MILESTONE_FRACTIONS})


@dataclass
class RuntimeConfig:
    """How a run executes: seed, hardware, caching, logging. Changes no result but the seed's."""

    seed: int = option(0, "random seed (initialisation, data order, augmentation)")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "auto: bf16 autocast where the hardware runs it fast, else fp32"
    )
    channels_last: Literal["auto", "on", "off"] = option("auto", "channels_last memory format")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda if present)")
    compile: bool = option(False, "torch.compile the models (minutes of compiling first)")
    teacher_cache: str | None = option(
        None,
        "serve the teacher's outputs from DIR (built there on first use): exact per "
        "augmentation view; for methods that read only teacher logits (kd, dkd, mhkd prefit)",
    )
    teacher_cache_topk: int | None = option(None, "keep only the top K cached logits")
    teacher_cache_mmap: bool = option(False, "read the teacher cache from disk, not memory")
    tensorboard: bool = option(False, "also log every epoch to OUT/tensorboard/")
    quiet: bool = option(False, "no progress bar or epoch lines")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "models": ModelsConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "runtime": RuntimeConfig,
}
#: Sections that pipelines add to the tree (``aux``: the proxy teacher's), registered by them
#: (:func:`register_section`); a tree holding one is built as its pipeline's configuration.
PIPELINE_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Add a pipeline's section: it gets flat flags and keywords like the core sections."""
    taken = set(flat_names())
    clashes = sorted(taken & {_flag(f).replace("-", "_") for f in dataclasses.fields(cls)})
    if name in SECTIONS or clashes:
        raise ValueError(f"section {name!r} clashes with existing settings: {clashes or name}")
    PIPELINE_SECTIONS[name] = cls


def without_default_sections(tree: dict[str, Any]) -> dict[str, Any]:
    """A configuration tree (as config.yaml holds it) less the pipelines' sections at their
    defaults: earlier releases wrote the proxy teacher's ``aux`` (mode none) into every run, so
    old and new runs of one setting compare (resume) and pool (reports) alike."""
    return {
        key: value
        for key, value in tree.items()
        if not (key in PIPELINE_SECTIONS and value == to_dict(PIPELINE_SECTIONS[key]()))
    }


def all_sections() -> dict[str, type]:
    """Every section of a tree: the core ones, then the pipelines'."""
    return {**SECTIONS, **PIPELINE_SECTIONS}


@dataclass
class RunConfig:
    """One training or distillation run (see the module docstring): what every such run has.

    A pipeline with a section of its own subclasses it (information flow's proxy teacher adds
    ``aux``); pruning's configuration has the core sections without the method's.
    """

    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    method: str = "ce"
    options: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        self.options = resolve_options(self.method, self.options)
        validate(self)
        validate_method(self)


#: Inclusive bounds of the counts a run takes (``section.field`` -> low, high): beyond them a
#: value is a typo or a unit mistake, and would fail late (memory, a hang) naming something else.
BOUNDS: dict[str, tuple[int, int]] = {
    "schedule.epochs": (1, 100_000),
    "optim.batch_size": (1, 2**20),
    "optim.eval_batch_size": (1, 2**20),
    "data.train_per_class": (1, 10_000_000),
    "data.image_size": (8, 4096),
    "data.workers": (0, 64),
    "runtime.seed": (0, 2**32 - 1),  # what numpy's and torch's generators accept
    "runtime.teacher_cache_topk": (1, 2**15),
}
#: The class count a classifier may have (``mhkd models --num-classes`` and the zoo).
NUM_CLASSES = (1, 100_000)


def check_range(flag: str, value: float | None, low: float, high: float) -> None:
    """Refuse ``value`` outside ``low..high`` (inclusive), naming ``flag`` and the range."""
    if value is not None and not low <= value <= high:
        raise ConfigError(f"{flag} must be in {low}..{high}, got {value}")


def flag_of(section: str, name: str) -> str:
    """``--flag`` of the field ``name`` of a section (as the CLI names it)."""
    f = {f.name: f for f in dataclasses.fields(all_sections()[section])}[name]
    return f"--{_flag(f)}"


def _numbers(config: Any) -> typing.Iterator[tuple[str, Any]]:
    """Every number of the tree with the flag that sets it (method options and weights too)."""
    for section in all_sections():
        if hasattr(config, section):
            for name, value in to_dict(getattr(config, section)).items():
                yield flag_of(section, name), value
    for method, options in getattr(config, "options", {}).items():
        for name, value in to_dict(options).items():
            yield f"--{method}.{name.replace('_', '-')}", value
    for term, value in getattr(config, "weights", {}).items():
        yield f"--weight {term}", value


def validate(config: Any) -> None:
    """Values every run refuses, each named as its flag would be: non-finite numbers, counts
    out of :data:`BOUNDS`, ranges of the optimiser and settings that do nothing (a flag that
    is silently ignored is a result misread). Any configuration with the core sections."""
    for flag, value in _numbers(config):
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{flag} must be a finite number, got {value}")
        if flag.endswith("temperature") and not value > 0:
            raise ConfigError(f"{flag} must be positive, got {value}")
    for path, (low, high) in BOUNDS.items():
        section, name = path.split(".")
        check_range(flag_of(section, name), getattr(getattr(config, section), name), low, high)
    s, o = config.schedule, config.optim
    checks = [
        (o.lr > 0, f"--lr must be positive, got {o.lr}"),
        (0 <= o.momentum < 1, f"--momentum must be in [0, 1), got {o.momentum}"),
        (o.weight_decay >= 0, f"--weight-decay must be >= 0, got {o.weight_decay}"),
        (s.gamma > 0, f"--gamma must be positive, got {s.gamma}"),
        (not o.nesterov or o.momentum > 0,
         "--nesterov needs momentum: with --momentum 0 give --no-nesterov"),
    ]  # fmt: skip
    if s.milestones is not None:
        m = s.milestones
        checks.append(
            (
                all(a < b for a, b in zip([0, *m], m, strict=False)),
                f"--milestones must be increasing positive epochs, got {m}",
            )
        )
        checks.append(
            (
                s.kind == "cosine" or not m or m[-1] <= s.epochs,
                f"--milestones {','.join(map(str, m))} lie beyond --epochs {s.epochs}: the lr "
                "would never decay there; give --milestones for the shorter run",
            )
        )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_unused(config)


def validate_method(config: RunConfig) -> None:
    """What a training or distillation run refuses besides: repeated methods, negative
    weights, and teacher settings that method ``ce`` would ignore."""
    if any(w < 0 for w in config.weights.values()):
        raise ConfigError("--weight values must be >= 0")
    parts = [p.strip() for p in config.method.split("+")]
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise ConfigError(
            f"--method {config.method} names {', '.join(repeated)} more than once; "
            "each method of a sum runs once"
        )
    m, rt = config.models, config.runtime
    ce, no_teacher = not expand(config.method), "method 'ce' uses no teacher"
    unused = [
        (ce and m.teacher is not None, "--teacher", no_teacher),
        (ce and m.teacher_arch is not None, "--teacher-arch", no_teacher),
        (ce and bool(m.teacher_layers), "--teacher-layers", no_teacher),
        (ce and bool(m.student_layers), "--student-layers", "method 'ce' taps no layers"),
        (ce and rt.teacher_cache is not None, "--teacher-cache", no_teacher),
    ]
    refuse_unused(unused)


def _default_milestones(schedule: ScheduleConfig) -> list[int]:
    """The milestones config.yaml spells out for any schedule (a cosine run's are unused)."""
    return dataclasses.replace(schedule, milestones=None).resolved_milestones()


def refuse_unused(checks: typing.Iterable[tuple[bool, str, str]]) -> None:
    """Refuse the first ``(given, flag, why)`` whose setting is given but does nothing."""
    for given, flag, why in checks:
        if given:
            raise ConfigError(f"{flag} does nothing in this run: {why}")


def _check_unused(config: Any) -> None:
    """Refuse runtime and schedule settings the run would ignore, naming the flag and why."""
    rt, s = config.runtime, config.schedule
    unused = [
        (rt.teacher_cache is None and rt.teacher_cache_topk is not None, "--teacher-cache-topk",
         "it needs --teacher-cache"),
        (rt.teacher_cache is None and rt.teacher_cache_mmap, "--teacher-cache-mmap",
         "it needs --teacher-cache"),
        (s.kind == "cosine" and s.milestones not in (None, _default_milestones(s)),
         "--milestones", "the cosine schedule has none"),
        (s.kind == "cosine" and s.gamma != ScheduleConfig.gamma, "--gamma",
         "the cosine schedule has no steps"),
    ]  # fmt: skip
    refuse_unused(unused)


def resolve_options(spec: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every method of ``spec`` (companions included) with its options dataclass filled in.

    ``given`` maps a method name to a dataclass or a dict of its fields; a method that is not
    in the spec, or a field its dataclass lacks, is an error.
    """
    names = expand(spec)
    extra = sorted(set(given) - set(names))
    if extra:
        raise ConfigError(
            f"options for {', '.join(extra)}, which method {spec!r} does not use "
            f"(it runs {', '.join(names) or 'no method'})"
        )
    resolved = {}
    for name in names:
        options_class = method_class(name).Options
        value = given.get(name)
        for key, number in (value or {}).items() if isinstance(value, dict) else ():
            if isinstance(number, float) and not math.isfinite(number):  # before __post_init__
                flag = f"--{name}.{key.replace('_', '-')}"
                raise ConfigError(f"{flag} must be a finite number, got {number}")
        if value is None or isinstance(value, dict):
            value = from_dict(options_class, value or {}, f"options.{name}")
        elif not isinstance(value, options_class):
            raise ConfigError(f"options.{name} must be a {options_class.__name__}")
        resolved[name] = value
    return resolved


# ---- dicts and YAML ---------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(kind: Any, value: Any, where: str) -> Any:
    """``value`` as type ``kind`` (int, float, str, bool, lists, optionals, literals)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option_type in inner:
            try:
                return _coerce(option_type, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, (str, int, float, Path)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be text, got {value!r}")
        return str(value)
    return value  # Any


def from_dict(cls: type, values: dict[str, Any], where: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``values`` (over the instance ``base`` when given),
    strictly: unknown keys and bad types are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {values!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"{where or cls.__name__} takes {', '.join(sorted(names))}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]):
            f = fields[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            kwargs[name] = from_dict(hints[name], value or {}, key, default)
        elif issubclass(cls, RunConfig) and name == "options":
            kwargs[name] = value or {}
        else:
            kwargs[name] = _coerce(hints[name], value, key)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def to_dict(config: Any) -> Any:
    """The tree as plain YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def resolved_tree(config: RunConfig) -> dict[str, Any]:
    """The configuration as the run's ``config.yaml`` holds it, less the ``resolved`` facts
    found at run time: every default filled in, the lr milestones and every term's weight
    spelled out. It is itself a valid recipe (``--print-config`` shows it)."""
    tree = to_dict(config)
    tree["schedule"]["milestones"] = config.schedule.resolved_milestones()
    tree["weights"] = {**default_weights(expand(config.method)), **config.weights}
    return tree


def to_yaml(tree: dict[str, Any]) -> str:
    """A configuration tree as YAML, in its fields' order (as ``config.yaml`` is written)."""
    return yaml.safe_dump(tree, sort_keys=False)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, mapping by mapping."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (it keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, kind: str = "recipe") -> dict[str, Any]:
    """A YAML mapping from ``path``; missing, unparsable or non-mapping files, a repeated key
    and a file with no keys at all are one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} not found: {path}")
    try:
        tree = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {kind} {path}: {exc}") from None
    if tree is None:
        raise ConfigError(f"{path} is an empty {kind} (no keys, only comments or nothing)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} is not a {kind}: expected a mapping of keys")
    return tree


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1})"
    return problem or str(exc).splitlines()[0]


# ---- command-line flags -----------------------------------------------------------------------
def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def _argparse_type(kind: Any, where: str):
    def parse(text: str) -> Any:
        try:
            return _coerce(kind, text, where)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_field(group: Any, f: dataclasses.Field, kind: Any, flag: str, dest: str) -> None:
    help_text = f.metadata.get("help", "")
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is not None and not isinstance(default, bool):
        help_text += f" (default: {default})"
    inner = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    if kind is bool or inner == [bool]:
        group.add_argument(
            f"--{flag}",
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
        return
    choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else None
    group.add_argument(
        f"--{flag}",
        dest=dest,
        default=argparse.SUPPRESS,
        choices=choices,
        type=None if choices else _argparse_type(kind, f"--{flag}"),
        metavar=None if choices else f.name.upper(),
        help=help_text,
    )


def add_flags(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...] | None = None,
    renames: dict[str, str] | None = None,
    methods: bool = True,
    skip: tuple[str, ...] = (),
    section_types: dict[str, type] | None = None,
) -> None:
    """One flag per field of ``sections`` (flat names) and, with ``methods``, per method option.

    ``renames`` maps ``section.field`` to another flag name (``models.student`` -> ``model``);
    ``skip`` leaves fields out; ``section_types`` adds sections of other configurations.
    """
    renames = renames or {}
    types_by_name = {**all_sections(), **(section_types or {})}
    seen: dict[str, str] = {}
    for section in sections if sections is not None else tuple(all_sections()):
        cls = types_by_name[section]
        group = parser.add_argument_group(section, (cls.__doc__ or "").splitlines()[0])
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            dest = f"{section}.{f.name}"
            if dest in skip:
                continue
            flag = renames.get(dest, _flag(f))
            if flag in seen:
                raise RuntimeError(f"flag --{flag} of {dest} clashes with {seen[flag]}")
            seen[flag] = dest
            _add_field(group, f, hints[f.name], flag, dest)
    if methods:
        add_method_flags(parser)


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--weight TERM=W`` and every method's options as ``--NAME.FIELD``."""
    from mhkd.methods import registered

    parser.add_argument(
        "--method",
        default=argparse.SUPPRESS,
        help="method or sum of methods, e.g. kd, mhkd, crd+mhkd",
    )
    parser.add_argument(
        "--weight",
        action="append",
        default=argparse.SUPPRESS,
        metavar="TERM=W",
        help="weight of a loss term, e.g. --weight kd=0.9",
    )
    for cls in registered():
        group = parser.add_argument_group(
            f"{cls.name} options", (cls.__doc__ or "").strip().splitlines()[0]
        )
        hints = _hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            flag = f"{cls.name}.{f.name.replace('_', '-')}"
            _add_field(group, f, hints[f.name], flag, f"options.{cls.name}.{f.name}")


def _parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"--weight expects TERM=NUMBER, got {item!r}")
    return weights


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line as a partial configuration tree."""
    tree: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest == "method":
            tree["method"] = value
        elif dest == "weight":
            tree["weights"] = _parse_weights(value)
        elif "." in dest:
            node = tree
            *parents, leaf = dest.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return tree


def flat_names() -> dict[str, str]:
    """Each core field's flat name (its flag, ``_`` for ``-``) -> its ``section.field`` path.

    The Python API takes these as keywords (``epochs=``, ``data_dir=``, ``schedule=``), so it
    and the CLI name every setting the same way.
    """
    names = {}
    for section, cls in all_sections().items():
        for f in dataclasses.fields(cls):
            names[_flag(f).replace("-", "_")] = f"{section}.{f.name}"
    return names


def from_keywords(**values: Any) -> dict[str, Any]:
    """A partial tree from flat keywords (see :func:`flat_names`); unknown ones are errors."""
    names = flat_names()
    tree: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("method", "options", "weights"):
            tree[key] = value
            continue
        if key not in names:
            raise ConfigError(f"unknown setting {key!r}; settings are {', '.join(sorted(names))}")
        section, leaf = names[key].split(".")
        tree.setdefault(section, {})[leaf] = value
    return tree


def build(tree: dict[str, Any], where: str = "", cls: type = RunConfig) -> Any:
    """A :class:`RunConfig` (or ``cls``) from a partial tree; ``where`` prefixes errors."""
    try:
        return from_dict(cls, tree)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


# ---- recipes ----------------------------------------------------------------------------------
#: Keys of a recipe that describe it rather than configure the run.
RECIPE_NOTES = ("paper", "notes")


def read_recipe(
    path: str | Path, cls: type | None = RunConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A recipe: (its configuration tree, its notes such as the paper's number).

    The tree is checked by building a ``cls`` from it (unless ``None``: the caller builds it),
    so a bad key or value is refused before any run.
    """
    tree = read_yaml(path)
    notes = {key: tree.pop(key) for key in RECIPE_NOTES if key in tree}
    if cls is not None:
        build(tree, str(path), cls)
    return tree, notes
