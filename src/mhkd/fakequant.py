"""Simulated int8 (fake quantization) on a model's convolutions and linear layers, for
quantization-aware training that ends in :mod:`mhkd.quantize`'s ONNX Runtime graph.

The simulation mirrors that graph: weights int8 symmetric per output channel ([-64, 64], the
exporter's 7-bit default, or [-127, 127]),
each layer's input int8 asymmetric per tensor at the MinMax range of a calibration sample, both
rounded with torch's ``fake_quantize_per_channel_affine`` / ``fake_quantize_per_tensor_affine``
(straight-through gradients inside the range). Per-channel symmetric scales make quantizing a
convolution's weights before or after folding its BatchNorm the same rounding, so the
unfolded training network sees the weights the exported, folded graph will hold. Ranges are
recalibrated from the float network at each epoch's start, exactly as the exporter calibrates
them, so they are a function of the weights alone: nothing extra to checkpoint, and a resumed
run recomputes them.

Why these two core ATen operators and not a quantization framework: in torch 2.13
``torch.ao.quantization`` (eager and FX ``prepare_qat``) is marked deprecated in favour of
torchao; torchao's QAT targets linear layers and PT2E graphs lowered to Inductor, not an ONNX
int8 file; NNCF would add a dozen dependencies. The exported graph's scales come from ONNX
Runtime's own calibration either way, so the only thing training must learn is weights that
survive its rounding, which these operators give directly.

Not simulated: the roundings ONNX Runtime adds between the layers' inputs (the logits, the
tensor before global pooling, residual additions' outputs); they are the smaller part of
the int8 error (see tests/test_int8.py).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Largest weight integer with 8 and with 7 bits (ONNX Runtime's ``reduce_range``).
WEIGHT_QMAX, REDUCED_QMAX = 127, 64
ACT_QMIN, ACT_QMAX = -128, 127


def fake_quant_weight(weight: Tensor, qmax: int = WEIGHT_QMAX) -> Tensor:
    """``weight`` rounded to [-qmax, qmax] symmetric per output channel (axis 0), in float."""
    absmax = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
    scale = (absmax / qmax).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


def activation_qparams(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of int8 asymmetric quantization of [low, high], 0 always inside."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / (ACT_QMAX - ACT_QMIN), 1e-8)
    zero = round(ACT_QMIN - low / scale)
    return scale, int(min(max(zero, ACT_QMIN), ACT_QMAX))


class QuantSim:
    """Fake int8 on every ``nn.Conv2d`` and ``nn.Linear`` of ``model``, until :meth:`remove`.

    It replaces those layers' ``forward`` on the instances only: parameters, state-dict keys
    and forward hooks (the methods' taps) are untouched, so checkpoints load into the bare
    model. Inputs are quantized once :meth:`calibrate` has given their ranges.
    ``reduce_range``: 7-bit weights, as the exporter writes them by default.
    """

    def __init__(self, model: nn.Module, reduce_range: bool = True):
        self.qmax = REDUCED_QMAX if reduce_range else WEIGHT_QMAX
        self.layers = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
        }
        if not self.layers:
            raise ValueError("quantization-aware training: the model has no Conv2d or Linear")
        self.ranges: dict[str, tuple[float, int]] = {}
        self.active = True
        for name, layer in self.layers.items():
            layer.forward = functools.partial(self._forward, name, layer)

    def _forward(self, name: str, layer: nn.Module, x: Tensor) -> Tensor:
        weight = layer.weight
        if self.active:
            if name in self.ranges:
                scale, zero = self.ranges[name]
                x = torch.fake_quantize_per_tensor_affine(  # float32: autocast runs bf16
                    x.float(), scale, zero, ACT_QMIN, ACT_QMAX
                ).to(x.dtype)
            weight = fake_quant_weight(weight, self.qmax)
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, weight, layer.bias)
        return F.linear(x, weight, layer.bias)

    @torch.no_grad()
    def calibrate(self, model: nn.Module, images: Tensor, batch_size: int = 64) -> None:
        """Each layer's input range over ``images``, the float model in eval mode (as ONNX
        Runtime's MinMax calibration sees it); the model's mode is restored."""
        low: dict[str, float] = {}
        high: dict[str, float] = {}

        def record(name: str, _module: nn.Module, args: tuple) -> None:
            x = args[0]
            low[name] = min(low.get(name, float("inf")), float(x.min()))
            high[name] = max(high.get(name, float("-inf")), float(x.max()))

        hooks = [
            layer.register_forward_pre_hook(functools.partial(record, name))
            for name, layer in self.layers.items()
        ]
        training, self.active = model.training, False
        try:
            model.eval()
            for chunk in images.split(batch_size):
                model(chunk)
        finally:
            self.active = True
            model.train(training)
            for hook in hooks:
                hook.remove()
        self.ranges = {name: activation_qparams(low[name], high[name]) for name in low}

    def remove(self) -> None:
        """Give the layers their own ``forward`` back."""
        for layer in self.layers.values():
            layer.__dict__.pop("forward", None)
        self.ranges = {}
