"""One registry for every quantization method.

A method is a config dataclass plus a handler::

    @register_method(RTNConfig)
    class RTNHandler(MethodHandler): ...

The handler turns one ``nn.Linear`` into its quantized module (and knows the
module class used to rebuild a model from a checkpoint).  Methods never touch
the packing format or the kernels directly; those live in ``formats`` and
``kernels``.

The registry imports no method module: the built-in ones (``onebit.methods``) register themselves
when imported, which the first lookup here (or registration) does by name, like an entry point (so ``import onebit`` stays cheap); a method defined elsewhere registers the same way,
with :func:`register_method`.
"""
from __future__ import annotations

import importlib
from typing import Callable, Type

import torch
from torch import nn

from .config import QuantConfig, check_format_version
from .errors import CheckpointError, OneBitError

_REGISTRY: dict[str, "Type[MethodHandler]"] = {}
_BUILTINS_LOADED = False


def _load_builtins() -> None:
    """Import the built-in method modules once (each calls :func:`register_method`).  By name, not
    an import statement: plugin discovery, not a dependency of the registry on the methods."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("onebit.methods").load_builtins()


class MethodHandler:
    """Base class for a registered method's handler: config + math, no model walking, no swapping.

    Subclasses set ``config_cls`` (filled in by :func:`register_method`) and implement
    :meth:`quantize_linear` and :meth:`empty_module`.  The quantize pipeline
    (:mod:`onebit.pipelines`) drives the handler; what it needs is declared here:

    * :attr:`needs_calibration`: calibration token ids are made (or taken from ``calib_ids=``)
      before quantizing, and passed on as ``calib_ids``;
    * :attr:`driver`: ``"layers"`` — the pipeline calls :meth:`quantize_model` (by default
      :meth:`quantize_linear` per layer, independently); ``"blocks"`` — the pipeline runs the decoder
      blocks in order on the calibration inputs, each block's target inputs going to :meth:`observe`
      before :meth:`quantize_block` packs the block (so later blocks see the errors of earlier ones);
      layers outside the blocks go to :meth:`quantize_outside`;
    * after the swap the pipeline calls :meth:`calibrate_activations` (static activation scales).
    """

    config_cls: Type[QuantConfig] = QuantConfig
    #: how the pipeline drives the handler: "layers" or "blocks" (see the class doc)
    driver: str = "layers"

    def __init__(self, config: QuantConfig):
        self.config = config

    @property
    def needs_calibration(self) -> bool:
        """Whether quantizing needs calibration activations: the config's ``needs_calibration()``
        (False for a config without one).  The one answer every caller asks."""
        ask = getattr(self.config, "needs_calibration", None)
        return bool(ask()) if callable(ask) else False

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        """Raise :class:`OneBitError` if the method cannot quantize this layer (the pipeline checks
        every target before any work)."""

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        """Return the packed inference module that replaces ``linear``."""
        raise NotImplementedError

    def train_module(self, name: str, linear: nn.Linear) -> nn.Module:
        """The trainable (fake-quant, straight-through) form of ``linear``.

        Its forward equals the packed module's forward for the same
        parameters, and it has ``to_packed(scale_dtype=None)`` returning that packed module (one
        signature for every method: ``scale_dtype`` is the stored scales' dtype, None the method's own).
        Distillation / QAT trains this form.
        """
        raise NotImplementedError(f"method '{self.config.method}' has no trainable form")

    def train_modules(self, model: nn.Module, targets: list[tuple[str, nn.Linear]]) -> dict[str, nn.Module]:
        """The trainable form of every target (``{name: module}``), before any swap.

        The default builds each with :meth:`train_module`; methods whose layers share
        parameters across modules (foldable OneBit) override it.
        """
        return {name: self.train_module(name, lin) for name, lin in targets}

    def tie_trainable(self, model: nn.Module, mods: dict[str, nn.Module]) -> None:
        """Re-establish shared parameters among trainable modules rebuilt from a checkpoint."""

    def quantize_model(self, model: nn.Module, targets: list[tuple[str, nn.Linear]],
                       progress: bool = True, **kwargs) -> dict[str, nn.Module]:
        """Quantize every target linear; return ``{name: packed module}`` (nothing swapped).

        The default treats layers independently (:meth:`quantize_linear`, extra keyword arguments
        passed on).  A method whose layers depend on each other (foldable OneBit's shared scales,
        LLM.int8()'s calibration pass) overrides it; one that needs block-by-block calibration
        inputs sets ``driver = "blocks"`` instead.
        """
        from tqdm.auto import tqdm

        return {name: self.quantize_linear(name, lin, **kwargs)
                for name, lin in tqdm(targets, desc=f"quantize [{self.config.method}]",
                                      disable=not progress, unit="layer")}

    # --------------------------------------------------------------- driver = "blocks"
    def begin_blocks(self, prefix: str) -> None:
        """Before the first block (``prefix``: the blocks' module-list name plus a dot): reset
        per-run state."""

    def observe(self, name: str, x: torch.Tensor) -> None:
        """One batch of inputs ``x`` [..., in_features] of target ``name``, its block in full precision."""
        raise NotImplementedError(f"method '{self.config.method}' does not run block by block")

    def quantize_block(self, block: nn.Module, prefix: str, lins: dict[str, nn.Linear]) -> dict[str, nn.Module]:
        """The packed modules of one block's targets ``lins`` (names start with ``prefix``), from
        what :meth:`observe` saw; may fold scales into the block's other modules (AWQ)."""
        raise NotImplementedError(f"method '{self.config.method}' does not run block by block")

    def quantize_outside(self, name: str, linear: nn.Linear) -> nn.Module:
        """A target outside the decoder blocks (no calibration inputs for it)."""
        return self.quantize_linear(name, linear)

    def end_blocks(self, packed: dict[str, nn.Module]) -> None:
        """After the last block, with every packed module: record what loading needs."""

    # --------------------------------------------------------------- after the swap
    def calibrate_activations(self, model: nn.Module, packed: dict[str, nn.Module],
                              calib_ids: torch.Tensor | None, progress: bool = True) -> None:
        """With ``packed`` swapped into ``model``: set static activation scales (default: none)."""

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        """An uninitialised packed module of the right shapes, for loading a checkpoint."""
        raise NotImplementedError


def register_method(config_cls: Type[QuantConfig]) -> Callable[[type], type]:
    """Class decorator: register a handler for ``config_cls.method``."""

    def deco(handler_cls: type) -> type:
        if not handler_cls.__module__.startswith("onebit.methods."):
            _load_builtins()  # a built-in name taken by a plugin first is still an error (a built-in
            # registering does not load the others: one importing another mid-import would cycle)
        name = config_cls.method
        if name in _REGISTRY and _REGISTRY[name] is not handler_cls:
            raise RuntimeError(f"method '{name}' registered twice")
        handler_cls.config_cls = config_cls
        _REGISTRY[name] = handler_cls
        return handler_cls

    return deco


def available_methods() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_handler_cls(name: str) -> "Type[MethodHandler]":
    _load_builtins()
    if name not in _REGISTRY:
        raise OneBitError(f"unknown method '{name}'; valid methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_handler(config: QuantConfig) -> MethodHandler:
    return get_handler_cls(config.method)(config)


def config_from_dict(d: dict) -> QuantConfig:
    """Rebuild a method's config from a checkpoint's ``quantization_config``."""
    if not isinstance(d, dict):
        raise CheckpointError("quantization_config is not a JSON object")
    name = d.get("method")
    _load_builtins()
    if not isinstance(name, str) or name not in _REGISTRY:
        check_format_version(d.get("format_version"))  # a newer format is the reason to give first
        if not isinstance(name, str):
            raise CheckpointError("quantization_config has no 'method' field")
    return get_handler_cls(name).config_cls.from_dict(d)  # from_dict checks the format version
