"""Loading the vendor's base model: a factory import path plus a state_dict (weights_only=True)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .._files import sha256_file
from .._imports import call_vendor, import_object
from ..config import Config
from ..errors import ConfigError, ModelError

__all__ = ["load_base_model", "base_model_sha256"]


def load_base_model(config: Config) -> nn.Module:
    factory = import_object(config.model.factory, root=config.root, field="model.factory")
    model = call_vendor(factory, spec=config.model.factory, field="model.factory")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory {config.model.factory} returned {type(model).__name__}, not a torch nn.Module")
    path = config.path(config.model.weights)
    try:
        with warnings.catch_warnings():  # torch warns about a plain pickle's protocol before refusing it; we report the refusal
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"base model weights {path} are missing", hint="check model.weights in tracer.toml") from exc
    except Exception as exc:  # torch raises many types for corrupt files and non-tensor pickles
        raise ModelError(f"base model weights {path.name} cannot be loaded safely: {type(exc).__name__}") from exc
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"base model weights {path.name} do not fit model.factory: {first}") from exc
    model.eval()
    x = torch.zeros((2, *config.task.input_shape), dtype=getattr(torch, config.task.input_dtype))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ConfigError(f"the base model does not accept task.input_shape {list(config.task.input_shape)}: {type(exc).__name__}") from exc
    if tuple(out.shape) != (2, config.task.num_classes):
        raise ConfigError(f"the base model outputs shape {list(out.shape[1:])}, expected [{config.task.num_classes}] (task.num_classes)")
    return model


def base_model_sha256(config: Config) -> str:
    return sha256_file(config.path(config.model.weights))
