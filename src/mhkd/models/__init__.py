"""The model zoo behind one registry: ``create("resnet20")``, ``create("resnet50")``.

Two families: the CIFAR networks of the CRD benchmark (32x32 inputs, 100 classes by default)
and ImageNet networks with torchvision's names and state_dict layout (``resnet18``,
``resnet34``, ``resnet50``, ``mobilenet_v2``; ``mobilenetv1`` as in the CRD/DKD ImageNet
experiments; 224x224 inputs, 1000 classes by default). The CIFAR ResNet-50 is
``resnet50_cifar``.

Every zoo model returns logits from ``forward`` and declares where to tap it:
``stage_names`` (the module names whose outputs end each spatial stage, in forward order),
``embedding_name`` (the flattened penultimate features), ``classifier_name`` (the last
``nn.Linear``) and ``default_input_size``. Every factory accepts ``width_mult`` to scale all
channel counts.
"""

from mhkd.models import (
    imagenet_mobilenet,
    imagenet_resnet,
    mobilenetv2,
    resnet,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from mhkd.models._base import ZooNet
from mhkd.models._registry import available, create, from_spec, register
from mhkd.models.complexity import count_macs, count_params, profile
from mhkd.models.imagenet_mobilenet import ImageNetMobileNetV2, MobileNetV1
from mhkd.models.imagenet_resnet import ImageNetResNet
from mhkd.models.mobilenetv2 import MobileNetV2
from mhkd.models.resize import channel_shapes, resize
from mhkd.models.resnet import ResNet
from mhkd.models.shufflenetv1 import ShuffleNetV1
from mhkd.models.shufflenetv2 import ShuffleNetV2
from mhkd.models.vgg import VGG
from mhkd.models.wrn import WideResNet

__all__ = [
    "VGG",
    "ImageNetMobileNetV2",
    "ImageNetResNet",
    "MobileNetV1",
    "MobileNetV2",
    "ResNet",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "WideResNet",
    "ZooNet",
    "available",
    "channel_shapes",
    "count_macs",
    "count_params",
    "create",
    "from_spec",
    "imagenet_mobilenet",
    "imagenet_resnet",
    "mobilenetv2",
    "profile",
    "register",
    "resize",
    "resnet",
    "shufflenetv1",
    "shufflenetv2",
    "vgg",
    "wrn",
]
