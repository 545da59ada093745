"""Capture named intermediate outputs of any ``nn.Module`` with forward hooks.

Models are never edited: a tap is a hook on a named submodule (``model.named_modules()``
names), removed when the tap is closed. A name ending in ``:in`` taps the module's *input*
instead (e.g. ``layer1.0.relu2:in``, the map before a ReLU module: pre-activation features).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

INPUT_SUFFIX = ":in"


class LayerNameError(ValueError):
    """A requested layer does not exist in the model."""


def _module_name(name: str) -> str:
    return name.removesuffix(INPUT_SUFFIX)


def check_layer_names(model: nn.Module, names: Iterable[str]) -> None:
    """Raise :class:`LayerNameError` listing the valid names when any of ``names`` is unknown."""
    existing = {name for name, _ in model.named_modules() if name}
    missing = [name for name in names if _module_name(name) not in existing]
    if missing:
        shown = ", ".join(sorted(existing, key=_natural_key)[:60])
        more = "" if len(existing) <= 60 else f" ... ({len(existing)} in all)"
        raise LayerNameError(
            f"unknown layer(s) {', '.join(map(repr, missing))} in {type(model).__name__}; "
            f"layers are: {shown}{more}"
        )


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in name.replace(".", " . ").split()]


class Taps:
    """Record the outputs of named submodules during forward passes.

    >>> with Taps(model, ["layer1", "layer2"]) as taps:
    ...     logits = model(x)
    ...     feats = taps.outputs      # {"layer1": Tensor, "layer2": Tensor}

    ``outputs`` is refreshed by every forward pass; a tap with no names costs nothing.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.names = list(dict.fromkeys(names))
        check_layer_names(model, self.names)
        self.outputs: dict[str, Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = [
            modules[name].register_forward_hook(self._recorder(name))
            if not name.endswith(INPUT_SUFFIX)
            else modules[_module_name(name)].register_forward_pre_hook(self._input_recorder(name))
            for name in self.names
        ]

    def _recorder(self, name: str):
        def hook(_module: nn.Module, _inputs, output) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[name] = output

        return hook

    def _input_recorder(self, name: str):
        def hook(module: nn.Module, inputs) -> None:
            # an in-place module would overwrite the tensor it is handed: keep a copy then
            x = inputs[0]
            self.outputs[name] = x.clone() if getattr(module, "inplace", False) else x

        return hook

    def pop(self) -> dict[str, Tensor]:
        """Return the outputs of the last forward pass and drop the references to them."""
        outputs, self.outputs = self.outputs, {}
        return outputs

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = {}

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
