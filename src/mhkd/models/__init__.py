"""The CIFAR model zoo of the CRD benchmark, behind one registry: ``create("resnet20")``.

Every zoo model returns logits from ``forward`` and declares where to tap it:
``stage_names`` (the module names whose outputs end each spatial stage, in forward order),
``embedding_name`` (the flattened penultimate features) and ``classifier_name`` (the last
``nn.Linear``). Every factory accepts ``width_mult`` to scale all channel counts.
"""

from mhkd.models import mobilenetv2, resnet, shufflenetv1, shufflenetv2, vgg, wrn
from mhkd.models._base import ZooNet
from mhkd.models._registry import available, create, from_spec, register
from mhkd.models.complexity import count_macs, count_params, profile
from mhkd.models.mobilenetv2 import MobileNetV2
from mhkd.models.resnet import ResNet
from mhkd.models.shufflenetv1 import ShuffleNetV1
from mhkd.models.shufflenetv2 import ShuffleNetV2
from mhkd.models.vgg import VGG
from mhkd.models.wrn import WideResNet

__all__ = [
    "VGG",
    "MobileNetV2",
    "ResNet",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "WideResNet",
    "ZooNet",
    "available",
    "count_macs",
    "count_params",
    "create",
    "from_spec",
    "mobilenetv2",
    "profile",
    "register",
    "resnet",
    "shufflenetv1",
    "shufflenetv2",
    "vgg",
    "wrn",
]
