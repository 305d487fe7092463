"""The PyTorch bridge: apply jlang masks and edits to a Hugging Face `transformers` model by hooks.

    import jlang.torch
    handle = jlang.torch.apply(hf_model, "masks.npz", lang="fr")          # deactivate fr (LAPE)
    with jlang.torch.apply(hf_model, edits):                              # any jlang Edits
        logits = hf_model(ids).logits
    handle.remove()                                                       # the model is as before

A forward hook on each decoder layer's activation module rewrites its output,
the neuron activations `a` (jlang's `mlp.act`, `[L, F]`): in a gated MLP the
activated gate `act(gate_proj x)` before `* up_proj x`, in a non-gated one
(BLOOM, OPT, Phi-2) `act(W_in x + b)`, the input of the output projection. These
are the tensors the LAPE-family repositories hook (RUCAIBox `activation.py` /
`ppl.py`, BLOOM's GELU and OPT's and Phi's `activation_fn` included;
tauimbz/lang-task-neuron `set_activation_mlp_v2`; Gurgurov's
`batch_generation.py`). Where each family keeps that module is data, one
`MLPLayout` row per MLP layout in `MLP_LAYOUTS`:

    layout        layers at                   neuron module      output projection   families
    gated         model.layers                mlp.act_fn         mlp.down_proj       Llama, Mistral, Qwen2/3,
                  model.language_model.layers                                        Gemma 1/2/3, Cohere, Cohere2
    fused-gated   model.layers                mlp.activation_fn  mlp.down_proj       Phi-3 (gate half of gate_up_proj)
    bloom         transformer.h               mlp.gelu_impl      mlp.dense_4h_to_h   BLOOM
    fc            model.layers                mlp.activation_fn  mlp.fc2             Phi (Phi-2)
    opt           model.decoder.layers        activation_fn      fc2                 OPT

The hook rewrites

    a' = where(mask, a * scale + shift, a)

exactly as `jlang.models.decoder.forward` does, so both give the same logits.
When the layers of a non-gated MLP share one activation module (a hook on it
could not tell the layers apart), the edit is a forward pre-hook on each
layer's output projection instead, whose input is the same tensor `a`.
Several `apply` calls stack: their hooks run in the order applied, which is
`jlang.edits.combine(..., overlap="compose")`.

torch is imported by this module only; the rest of jlang never needs it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jlang import edits as E
from jlang.masks import MaskShapeError, NeuronMasks
from jlang.models.decoder import Edits

__all__ = [
    "apply",
    "Handle",
    "decoder_layers",
    "mlp_shape",
    "mlp_layout",
    "MLPLayout",
    "MLP_LAYOUTS",
    "MODES",
    "BridgeError",
]

# mode -> the jlang.edits constructor it builds (options are passed through)
MODES = {
    "deactivate": E.deactivate,
    "amplify": E.amplify,
    "set_to": E.set_to,
    "set_to_statistic": E.set_to_statistic,
    "add": E.add,
    "replace": E.replace,
    "diffmean": E.diffmean,
}

# Where transformers keeps the decoder layers, most specific first.
_LAYER_PATHS = (
    "model.layers",  # *ForCausalLM: Llama, Mistral, Qwen2/3, Gemma 1/2/3 text, Cohere 1/2, Phi, Phi-3
    "model.language_model.layers",  # Gemma3ForConditionalGeneration (transformers >= 4.52)
    "language_model.model.layers",  # older multimodal wrappers
    "model.language_model.model.layers",
    "transformer.h",  # BloomForCausalLM
    "model.decoder.layers",  # OPTForCausalLM
    "decoder.layers",  # a bare OPTModel
    "layers",  # a bare *Model (LlamaModel, Gemma3TextModel, PhiModel)
    "h",  # a bare BloomModel
)


@dataclass(frozen=True)
class MLPLayout:
    """Where one MLP layout keeps its neurons, as attribute paths from a decoder layer.

    Attributes:
      name: the layout's name.
      act: the per-layer activation module whose output is jlang's `mlp.act`.
      out: the projection the neurons feed; its `in_features` is F, the neurons per layer.
      gated: whether `out` sees `act(...) * up` (gated) or the neurons themselves (non-gated),
        so that a pre-hook on `out` can stand in for a hook on a shared `act`.
      families: the transformers models with this layout.
    """

    name: str
    act: str
    out: str
    gated: bool
    families: str


# One row per MLP layout, checked in order; a layer has a layout when both paths are modules.
MLP_LAYOUTS = (
    MLPLayout("gated", "mlp.act_fn", "mlp.down_proj", True, "Llama, Mistral, Qwen2/3, Gemma 1/2/3, Cohere, Cohere2"),
    MLPLayout("fused-gated", "mlp.activation_fn", "mlp.down_proj", True, "Phi-3"),
    MLPLayout("bloom", "mlp.gelu_impl", "mlp.dense_4h_to_h", False, "BLOOM"),
    MLPLayout("fc", "mlp.activation_fn", "mlp.fc2", False, "Phi (Phi-2)"),
    MLPLayout("opt", "activation_fn", "fc2", False, "OPT"),
)

_SUPPORTED = ", ".join(f"{x.families} (`layer.{x.act}`)" for x in MLP_LAYOUTS)


class BridgeError(ValueError):
    """The model or the mask/edit cannot be bridged; the message says why and how to fix it."""


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _layout_of(layers: Any) -> MLPLayout | None:
    """The first layout every layer of the ModuleList `layers` has, or None."""
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        return None
    for layout in MLP_LAYOUTS:
        if all(
            isinstance(_get(x, layout.act), torch.nn.Module) and isinstance(_get(x, layout.out), torch.nn.Module)
            for x in layers
        ):
            return layout
    return None


def _find_layers(model: torch.nn.Module) -> tuple[list[torch.nn.Module], MLPLayout]:
    for path in _LAYER_PATHS:
        layers = _get(model, path)
        layout = _layout_of(layers)
        if layout is not None:
            return list(layers), layout
    found = [(name, mod, _layout_of(mod)) for name, mod in model.named_modules()]
    found = [(name, mod, layout) for name, mod, layout in found if layout is not None]
    text = [x for x in found if "vision" not in x[0] and "audio" not in x[0]]
    if len(text) == 1:
        return list(text[0][1]), text[0][2]
    if not found:
        raise BridgeError(
            f"{type(model).__name__}: found no decoder layers with a known MLP; jlang.torch supports "
            f"transformers' {_SUPPORTED}"
        )
    raise BridgeError(f"{type(model).__name__}: several layer lists have a known MLP: {[x[0] for x in found]}")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a transformers model, each with an MLP of one of `MLP_LAYOUTS`.

    Tries the usual attribute paths (`model.layers`, Gemma 3's
    `model.language_model.layers`, BLOOM's `transformer.h`, OPT's
    `model.decoder.layers`, ...), then any `ModuleList` whose every element has
    a known MLP (preferring a language model's over, say, a vision tower's).
    """
    return _find_layers(model)[0]


def mlp_layout(model: torch.nn.Module) -> MLPLayout:
    """The `MLPLayout` of the model's decoder layers: which module `apply` hooks."""
    return _find_layers(model)[1]


def mlp_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(L, F): decoder layers and MLP neurons per layer (the output projection's input size)."""
    layers, layout = _find_layers(model)
    sizes = {getattr(_get(layer, layout.out), "in_features", None) for layer in layers}
    if len(sizes) == 1 and None not in sizes:
        return len(layers), int(sizes.pop())
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    size = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
    if not isinstance(size, int):
        raise BridgeError(f"{type(model).__name__}: cannot tell the MLP intermediate size (layers have {sizes})")
    return len(layers), size


@dataclass
class Handle:
    """The hooks `apply` registered. `remove()` (or leaving the `with` block) undoes them."""

    edits: Edits
    hooks: list = field(default_factory=list)
    layers: list[int] = field(default_factory=list)  # the layers that got a hook (those with edited neurons)

    @property
    def active(self) -> bool:
        return bool(self.hooks)

    def remove(self) -> None:
        """Remove every hook; calling it again does nothing."""
        while self.hooks:
            self.hooks.pop().remove()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        n = int(np.asarray(self.edits.mask).sum())
        return f"Handle({n} neurons in {len(self.layers)} layers, {'active' if self.active else 'removed'})"


def _make_edit(mask: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
    """`a -> where(mask, a * scale + shift, a)` over the last axis, in `a`'s dtype and device."""
    cache: dict = {}

    def edit(a: torch.Tensor) -> torch.Tensor:
        key = (a.dtype, a.device)
        if key not in cache:  # jlang casts scale and shift to the activation's dtype too
            cache[key] = (mask.to(a.device), scale.to(a.device, a.dtype), shift.to(a.device, a.dtype))
        m, s, b = cache[key]
        return torch.where(m, a * s + b, a)

    return edit


def _register(module: torch.nn.Module, edit, pre: bool):
    """A forward hook rewriting `module`'s output, or (`pre`) a pre-hook rewriting its first input."""
    if pre:
        return module.register_forward_pre_hook(lambda mod, args: (edit(args[0]), *args[1:]))
    return module.register_forward_hook(lambda mod, args, output: edit(output))


def _hook_modules(model: torch.nn.Module) -> tuple[list[torch.nn.Module], bool]:
    """The module to hook in each layer, and whether the hook is a pre-hook on the output projection."""
    layers, layout = _find_layers(model)
    acts = [_get(layer, layout.act) for layer in layers]
    if len({id(a) for a in acts}) == len(acts):
        return acts, False
    outs = [_get(layer, layout.out) for layer in layers]
    if layout.gated or len({id(o) for o in outs}) != len(outs):
        raise BridgeError(
            f"the layers share one `{layout.act}` module, so a hook could not tell the layers apart "
            f"(and `{layout.out}` sees `act * up`, not the neurons); give each layer its own activation module"
        )
    return outs, True


def _load_masks(source: Any, languages: Sequence[str] | None, num_neurons: int) -> NeuronMasks:
    path = Path(source)
    if path.suffix == ".npz":
        return NeuronMasks.load(path)
    if languages is None:
        raise BridgeError(
            f"{path}: a LAPE torch.save mask has no language codes; pass languages=[...] in the file's order "
            "(LAPE: en zh fr es vi id ja; NJUNLP: en ru es fr de zh ja bn th sw)"
        )
    return NeuronMasks.from_lape_pt(path, languages, num_neurons=num_neurons)


def _as_numpy_indices(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)):
        return [_as_numpy_indices(y) for y in x]
    return x


def _to_edits(source: Any, L: int, F: int, *, lang, mode, value, languages, options) -> Edits:
    if isinstance(source, Edits):
        if lang is not None or options or not (isinstance(value, (int, float)) and value == 0.0):
            raise BridgeError("an Edits object is applied as it is; drop lang=, value= and the intervention options")
        return source
    if isinstance(source, (str, os.PathLike)):
        source = _load_masks(source, languages, F)
    elif isinstance(source, (list, tuple)):
        indices = _as_numpy_indices(source)
        if indices and all(isinstance(x, np.ndarray) for x in indices):  # one language's mask[k]: L index tensors
            if lang is not None:
                raise BridgeError("a list of per-layer index tensors is one language's mask; drop lang=")
            source = NeuronMasks.from_indices([indices], ["mask"], num_neurons=F)
            lang = "mask"
        else:  # the whole LAPE List[List[LongTensor]]
            if languages is None:
                raise BridgeError("pass languages=[...] to name the lists of a LAPE List[List[LongTensor]] mask")
            source = NeuronMasks.from_indices(indices, languages, num_neurons=F)
    if not isinstance(source, NeuronMasks):
        raise BridgeError(
            "expected jlang Edits, NeuronMasks, a .npz / LAPE .pt path or a LAPE index list, "
            f"got {type(source).__name__}"
        )
    source.check_fits(L, F)
    if mode not in MODES:
        raise BridgeError(f"unknown mode {mode!r}; use one of {sorted(MODES)}")
    if mode in ("deactivate", "set_to"):
        options = {("value" if mode == "deactivate" else "values"): value, **options}
    return MODES[mode](source, lang, **options)


def apply(
    model: torch.nn.Module,
    source: Any,
    *,
    lang: str | Sequence[str] | None = None,
    mode: str = "deactivate",
    value: Any = 0.0,
    languages: Sequence[str] | None = None,
    **options: Any,
) -> Handle:
    """Register hooks on every decoder layer's activation module (`mlp_layout`) that apply a jlang edit.

    Args:
      model: a transformers PyTorch causal LM (or its base model).
      source: one of
        * `jlang.models.decoder.Edits` (`[L, F]` arrays, e.g. from `jlang.edits`);
        * `NeuronMasks`, or a path to its `.npz`, with `lang` and `mode`;
        * a LAPE mask: a `.pt`/`.pth` path (`torch.save` of `List[List[LongTensor]]`,
          as RUCAIBox `identify.py` writes) or that list itself, with `languages`
          naming its lists in order; or one language's `mask[k]` (a list of L
          index tensors), with no `lang`.
      lang: the language (or languages: their union) whose neurons to edit; for
        add/replace/diffmean, the target language t.
      mode: "deactivate" (`a = value`; LAPE 0, Gurgurov −1 / −1.5), "amplify"
        (`factor=`), "set_to" (`value` constant or [L, F]), "set_to_statistic"
        (`stats=`, `statistic=`), "add" (`stats=`, `alpha=`, `definition=`),
        "replace", "diffmean" (`stats=`): the `jlang.edits` constructor of that
        name, called with `options`.
      languages: language codes of a LAPE `.pt` mask or index list.

    Returns:
      a `Handle`; `handle.remove()` (or `with apply(...):`) restores the model.

    Raises:
      MaskShapeError: the mask or edits are not `[layers, intermediate size]` of `model`.
    """
    L, F = mlp_shape(model)
    modules, pre = _hook_modules(model)
    edits = _to_edits(source, L, F, lang=lang, mode=mode, value=value, languages=languages, options=options)
    shapes = {name: np.shape(getattr(edits, name)) for name in ("mask", "scale", "shift")}
    if set(shapes.values()) != {(L, F)}:
        raise MaskShapeError(
            f"edits of shape {shapes['mask']} (scale {shapes['scale']}, shift {shapes['shift']}) do not fit "
            f"{type(model).__name__} with {L} layers x {F} MLP neurons; build them for this model"
        )
    mask = np.asarray(edits.mask, bool)
    scale = np.asarray(edits.scale, np.float32)
    shift = np.asarray(edits.shift, np.float32)
    handle = Handle(edits=edits)
    try:
        for l, module in enumerate(modules):
            if not mask[l].any():
                continue  # nothing to edit: no hook, same result
            edit = _make_edit(
                torch.from_numpy(mask[l].copy()), torch.from_numpy(scale[l].copy()), torch.from_numpy(shift[l].copy())
            )
            handle.hooks.append(_register(module, edit, pre))
            handle.layers.append(l)
    except BaseException:
        handle.remove()
        raise
    return handle
