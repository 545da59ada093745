"""Other projects' checkpoints of the zoo's networks, mapped onto mhkd's key layout.

Most CIFAR-100 distillation studies start from the teachers RepDistiller and mdistiller publish
(``<arch>_vanilla/ckpt_epoch_240.pth``). Their networks compute exactly what mhkd's zoo models
compute; only parameter names differ. Each architecture family below has one small table of
renaming rules, written from those projects' published model definitions. A torchvision-layout
ImageNet state_dict needs no renaming: it fits mhkd's ImageNet models as it is.

Everything here is pure key bookkeeping on state_dicts: nothing is read from disk, no model is
built. :func:`mhkd.checkpoint.load_model` does both, and names the file in its errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from mhkd.models._registry import available


class LayoutError(ValueError):
    """A state_dict's keys fit no known architecture, or mix two layouts."""


@dataclass(frozen=True)
class Family:
    """How one architecture family's foreign keys become mhkd's.

    ``rules`` are ``(pattern, replacement)`` pairs applied in order with ``re.sub``; a key no
    rule matches is already named as in mhkd. ``foreign`` and ``native`` match keys only the
    foreign, respectively only mhkd's, layout has: a file with both kinds mixes the two.
    """

    name: str
    rules: tuple[tuple[str, str], ...] = ()
    foreign: str | None = None
    native: str | None = None


# RepDistiller's models/resnet.py: `downsample` shortcuts, a `fc` classifier.
CIFAR_RESNET = Family(
    "CIFAR ResNet",
    rules=((r"\.downsample\.", ".shortcut."), (r"^fc\.", "classifier.")),
    foreign=r"\.downsample\.|^fc\.",
    native=r"\.shortcut\.|^classifier\.",
)
# models/resnetv2.py (ResNet50): named as mhkd's but for the `linear` classifier.
RESNET_V2 = Family(
    "CIFAR ResNet-50",
    rules=((r"^linear\.", "classifier."),),
    foreign=r"^linear\.",
    native=r"^classifier\.",
)
# models/wrn.py: units under `blockN.layer`, `convShortcut`, the final BN is `bn1`, `fc`.
WRN = Family(
    "Wide ResNet",
    rules=(
        (r"^(block\d)\.layer\.", r"\1."),
        (r"\.convShortcut\.", ".shortcut."),
        (r"^bn1\.", "bn."),
        (r"^fc\.", "classifier."),
    ),
    foreign=r"^block\d\.layer\.|\.convShortcut\.|^bn1\.|^fc\.",
    native=r"^block\d\.\d|\.shortcut\.|^bn\.|^classifier\.",
)
# models/vgg.py (vgg*_bn): conv/BN at the same Sequential indices as mhkd's; the block's last
# ReLU is applied outside its Sequential there, which renames nothing.
VGG = Family("VGG")
# models/mobilenetv2.py (mobile_half): the classifier sits in a one-layer Sequential.
MOBILENET_V2 = Family(
    "MobileNetV2",
    rules=((r"^classifier\.0\.", "classifier."),),
    foreign=r"^classifier\.0\.",
    native=r"^classifier\.(weight|bias)$",
)
# models/ShuffleNetv1.py: named as mhkd's but for the `linear` classifier.
SHUFFLE_V1 = Family(
    "ShuffleNetV1",
    rules=((r"^linear\.", "classifier."),),
    foreign=r"^linear\.",
    native=r"^classifier\.",
)
# models/ShuffleNetv2.py: flat conv1..conv5/bn1..bn5 per unit where mhkd has Sequentials; the
# down-sampling unit (index 0 of each stage) has a left and a right branch.
_V2_DOWN = {"conv1": "left.0", "bn1": "left.1", "conv2": "left.2", "bn2": "left.3",
            "conv3": "right.0", "bn3": "right.1", "conv4": "right.3", "bn4": "right.4",
            "conv5": "right.5", "bn5": "right.6"}  # fmt: skip
_V2_UNIT = {"conv1": "branch.0", "bn1": "branch.1", "conv2": "branch.3", "bn2": "branch.4",
            "conv3": "branch.5", "bn3": "branch.6"}  # fmt: skip
SHUFFLE_V2 = Family(
    "ShuffleNetV2",
    rules=(
        *((rf"^(layer\d\.0)\.{old}\.", rf"\1.{new}.") for old, new in _V2_DOWN.items()),
        *((rf"^(layer\d\.[1-9]\d*)\.{old}\.", rf"\1.{new}.") for old, new in _V2_UNIT.items()),
        (r"^linear\.", "classifier."),
    ),
    foreign=r"^layer\d\.\d+\.(conv|bn)\d\.|^linear\.",
    native=r"\.(left|right|branch)\.|^classifier\.",
)
# torchvision's ImageNet layout, which mhkd's ImageNet models share.
TORCHVISION = Family("torchvision")

#: RepDistiller/mdistiller model names (their spelling) -> (mhkd zoo name, family).
ARCHS: dict[str, tuple[str, Family]] = {
    **{
        f"resnet{depth}": (f"resnet{depth}", CIFAR_RESNET) for depth in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": ("resnet8x4", CIFAR_RESNET),
    "resnet32x4": ("resnet32x4", CIFAR_RESNET),
    "ResNet50": ("resnet50_cifar", RESNET_V2),
    **{name: (name, WRN) for name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")},
    **{name: (name, VGG) for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "MobileNetV2": ("mobilenetv2", MOBILENET_V2),
    "ShuffleV1": ("shufflenetv1", SHUFFLE_V1),
    "ShuffleV2": ("shufflenetv2", SHUFFLE_V2),
}


def _zoo(name: str) -> str:
    """The zoo's name for a model; the CIFAR ResNet-50 is ``resnet50`` in zoos that predate
    ``resnet50_cifar`` (the name ``resnet50`` then meaning the ImageNet network)."""
    if name == "resnet50_cifar" and name not in available():
        return "resnet50"
    return name


def resolve(arch: str) -> tuple[str, Family]:
    """The zoo name and family for ``arch``: a RepDistiller/mdistiller name (``ResNet50``,
    ``ShuffleV1``, ...) or an mhkd zoo name (``resnet50_cifar``, ``shufflenetv1``, ...).

    Exact spellings win, theirs then mhkd's (``ResNet50`` is RepDistiller's CIFAR network,
    ``resnet50`` the zoo's ImageNet one), then mhkd's CIFAR names and theirs in any case. A
    zoo model no foreign project names loads as it is (the torchvision layout of mhkd's
    ImageNet models).
    """
    if arch in ARCHS:
        zoo, family = ARCHS[arch]
        return _zoo(zoo), family
    by_zoo = {_zoo(zoo): family for zoo, family in ARCHS.values()}
    if arch in available():
        return arch, by_zoo.get(arch, TORCHVISION)
    if arch.lower() in by_zoo:
        return arch.lower(), by_zoo[arch.lower()]
    folded = {name.lower(): name for name in ARCHS}
    if arch.lower() in folded:
        return resolve(folded[arch.lower()])
    if arch.lower() in available():
        return arch.lower(), TORCHVISION
    raise LayoutError(
        f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)} or a zoo model"
    )


def unwrap(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix ``nn.DataParallel`` puts on every key."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def detect_foreign(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the keys are a RepDistiller/mdistiller layout that needs renaming for mhkd.

    ``False`` for mhkd's own layout, for a layout no table knows, and for the architectures
    both projects name alike (VGG; torchvision's ImageNet layout, which mhkd's models share).
    """
    try:
        family = resolve(arch_from_keys(state_dict))[1]
    except LayoutError:
        return False
    return bool(family.foreign) and any(
        re.search(family.foreign, key) for key in unwrap(state_dict)
    )


def arch_from_folder(path: str | Path) -> str | None:
    """The architecture a checkpoint's folder names as RepDistiller/mdistiller write it.

    ``.../wrn_40_2_vanilla/ckpt_epoch_240.pth`` -> ``"wrn_40_2"``; ``ResNet50_vanilla`` ->
    ``"ResNet50"``. ``None`` when the folder is not ``<a known arch>_vanilla``.
    """
    folder = Path(path).parent.name
    if not folder.endswith("_vanilla"):
        return None
    name = folder[: -len("_vanilla")]
    if name in ARCHS:
        return name
    folded = {arch.lower(): arch for arch in ARCHS}
    return folded.get(name.lower())


def _units(keys: set[str], prefix: str) -> int:
    """How many numbered children ``prefix<i>.`` the keys show (a stage's block count)."""
    found = {
        int(m.group(1)) for key in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))
    }
    return len(found)


def _describe(state_dict: Mapping[str, Tensor]) -> str:
    keys = list(state_dict)
    return f"{len(keys)} tensors, first keys {', '.join(keys[:3]) or '(none)'}"


def arch_from_keys(state_dict: Mapping[str, Tensor]) -> str:
    """The architecture a state_dict's keys and shapes spell, in either layout.

    Returns a RepDistiller/mdistiller name for the CIFAR families and an mhkd zoo name for
    torchvision's ImageNet layouts (``resnet18/34/50``, ``mobilenet_v2``). An unknown or
    ambiguous layout raises :class:`LayoutError` saying what was found.
    """
    sd = unwrap(state_dict)
    keys = set(sd)

    def out_channels(key: str) -> int:
        return sd[key].shape[0] if key in sd and sd[key].dim() else -1

    if "features.0.0.weight" in keys and "classifier.1.weight" in keys:
        return "mobilenet_v2"
    if "conv1.0.weight" in keys and "conv2.0.weight" in keys and _units(keys, "blocks."):
        if out_channels("conv1.0.weight") == 16:
            return "MobileNetV2"
        raise LayoutError(f"a MobileNetV2 of stem width {out_channels('conv1.0.weight')}, not 16")
    if "block0.0.weight" in keys:
        convs = sum(
            1 for key in keys if re.match(r"block\d\.\d+\.weight$", key) and sd[key].dim() == 4
        )
        return _known(f"vgg{convs + 3}", f"a VGG of {convs} conv layers")
    wrn_first = [k for k in ("block1.layer.0.conv1.weight", "block1.0.conv1.weight") if k in keys]
    if wrn_first:
        depth = 6 * max(_units(keys, "block1.layer."), _units(keys, "block1.")) + 4
        widen = out_channels(wrn_first[0]) // 16
        return _known(f"wrn_{depth}_{widen}", f"a WRN-{depth}-{widen}")
    if "layer1.0.conv5.weight" in keys or "layer1.0.left.0.weight" in keys:
        return "ShuffleV2"
    stem = tuple(sd["conv1.weight"].shape) if "conv1.weight" in keys else ()
    bottleneck = "layer1.0.conv3.weight" in keys
    if len(stem) == 4 and stem[2:] == (1, 1) and bottleneck:
        return "ShuffleV1"
    if len(stem) == 4 and "layer1.0.conv1.weight" in keys:
        depths = tuple(_units(keys, f"layer{i}.") for i in range(1, 5))
        block = "bottleneck" if bottleneck else "basic"
        if stem[2:] == (7, 7):
            torchvision = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                           ("bottleneck", (3, 4, 6, 3)): "resnet50"}  # fmt: skip
            found = torchvision.get((block, depths))
            if found:
                return found
            raise LayoutError(f"an ImageNet ResNet of {block} blocks {depths}, not 18/34/50")
        if depths[3] and (block, depths) == ("bottleneck", (3, 4, 6, 3)):
            return "ResNet50"
        width = {16: "", 32: "x4"}.get(stem[0])  # the thin CIFAR ResNets, and the x4 ones
        if not depths[3] and block == "basic" and len(set(depths[:3])) == 1 and width is not None:
            name = f"resnet{6 * depths[0] + 2}{width}"
            return _known(name, f"a CIFAR ResNet of {depths[0]} blocks per stage")
        raise LayoutError(
            f"a {block}-block ResNet of stages {depths} with a {stem} stem, not in mhkd's zoo"
        )
    raise LayoutError(f"no known architecture in these keys ({_describe(sd)})")


def _known(name: str, what: str) -> str:
    if name not in ARCHS:
        raise LayoutError(f"{what} ({name}), which neither RepDistiller nor mhkd's zoo has")
    return name


def _mixed(sd: Mapping[str, Tensor], family: Family) -> str | None:
    """One example key of each layout when ``sd`` holds both, else ``None``."""
    if not (family.foreign and family.native):
        return None
    theirs = next((k for k in sd if re.search(family.foreign, k)), None)
    ours = next((k for k in sd if re.search(family.native, k)), None)
    return f"{theirs!r} and {ours!r}" if theirs and ours else None


def to_mhkd(state_dict: Mapping[str, Tensor], arch: str) -> tuple[str, int, dict[str, Tensor]]:
    """Rename a state_dict's keys into mhkd's layout for ``arch`` (see :func:`resolve`).

    Returns ``(zoo name, number of classes, renamed state_dict)``; keys already in mhkd's
    layout pass unchanged. Raises :class:`LayoutError` for a file mixing both layouts or one
    without a single classifier matrix to count the classes by.
    """
    zoo, family = resolve(arch)
    sd = unwrap(state_dict)
    mixed = _mixed(sd, family)
    if mixed:
        raise LayoutError(f"mixes RepDistiller/mdistiller and mhkd {family.name} keys ({mixed})")
    renamed = {}
    for key, value in sd.items():
        for pattern, replacement in family.rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    matrices = [
        key for key, value in renamed.items() if key.endswith("weight") and value.dim() == 2
    ]
    if len(matrices) != 1:
        raise LayoutError(
            f"expected one classifier matrix for {arch}, found {len(matrices)} ({_describe(sd)})"
        )
    return zoo, renamed[matrices[0]].shape[0], renamed
