"""Checkpoints, written and read: the plain trainer's ``model.pt``, Lightning's ``.ckpt`` and the shipped
``.safetensors`` weights, each to a ready model (``load_checkpoint``).

Nothing read here can run code: ``.pt`` and ``.ckpt`` go through ``torch.load(weights_only=True)``, whose
unpickler builds only tensors and plain containers (plus the one Lightning type allow-listed below), and
safetensors holds nothing but tensors and a string table. A file that needs more is refused with a UserError.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..device import Runtime, autocast_dtype, pick_device
from ..model import NUM_CLASSES, build_model
from ..utils import UserError, atomic_path

CHECKPOINT_FORMAT = "cifar_s12.checkpoint/1"
WEIGHTS_FORMAT = "cifar_s12.weights/1"  # the safetensors metadata's "format"
SAFETENSORS_SUFFIX = ".safetensors"


# ----------------------------------------------------------------------------------------------------------------
# Writing
def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_name: str, model_kwargs: dict,
                    config: dict, classes: tuple[str, ...], **extra) -> None:
    """A self-describing ``.pt``: enough to rebuild the model without the code that trained it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": state, "model": model_name,
               "model_kwargs": model_kwargs, "config": config, "classes": list(classes), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_train_state(path: str | os.PathLike) -> dict:
    """The plain trainer's ``checkpoints/last.pt`` for ``--resume``: a ``save_checkpoint`` payload whose
    ``training`` part holds the optimizer, OneCycle and grad-scaler states and the run's metrics so far."""
    payload = read_checkpoint_file(path, context="--resume: ")
    if payload.get("format") != CHECKPOINT_FORMAT or not isinstance(payload.get("training"), dict):
        raise UserError(f"--resume: {path} is not the plain trainer's training state (a model.pt holds weights "
                        f"only); pass the folder of a --trainer torch run, which holds checkpoints/last.pt")
    return payload


def save_safetensors(path: str | os.PathLike, model: nn.Module, model_name: str, model_kwargs: dict,
                     config: dict, classes: tuple[str, ...], dtype: torch.dtype = torch.float16) -> None:
    """The shipped form: floating-point tensors in ``dtype`` (fp16 halves the file: 13 MB for CustomResNet), the
    model's name, arguments, recipe and classes as JSON strings in the safetensors metadata."""
    from safetensors.torch import save_file

    state = {k: (v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in model.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "model": model_name, "model_kwargs": json.dumps(model_kwargs),
                "config": json.dumps(config), "classes": json.dumps(list(classes))}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


# ----------------------------------------------------------------------------------------------------------------
# Reading
def _safe_globals() -> list:
    """Types a Lightning ``.ckpt`` of ours may hold besides tensors and containers: ``save_hyperparameters`` keeps
    the hyper-parameters in an AttributeDict (a dict subclass). Imported only if Lightning is installed."""
    try:
        from lightning_fabric.utilities.data import AttributeDict
    except ImportError:
        return []
    return [AttributeDict]


def read_checkpoint_file(path: str | os.PathLike, context: str = "") -> dict:
    """A torch checkpoint file as a dict, or a UserError that says what is wrong (``context`` prefixes it).

    ``weights_only=True``: a file whose pickle names any other callable (the way a malicious ``.pt`` runs code) is
    refused before that callable is ever looked up."""
    path = _existing_file(path, context)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # not a pickle the safe unpickler understands at all
            raise UserError(f"{context}{path} is not a checkpoint: torch.load failed (UnpicklingError)") from None
        raise UserError(f"{context}{path} was refused: it holds more than tensors and plain data, and loading it "
                        f"could run code ({_unsafe_global(str(err))})") from None
    except Exception as err:
        raise UserError(f"{context}{path} is not a checkpoint: torch.load failed ({type(err).__name__})") from None
    if not isinstance(payload, dict):
        raise UserError(f"{context}{path} is not a checkpoint: it holds a {type(payload).__name__}, not a dict")
    return payload


def _unsafe_global(message: str) -> str:
    """The name torch's safe unpickler stopped at, from its message ("Unsupported global: GLOBAL os.system ...")."""
    for line in message.splitlines():
        if "GLOBAL" in line:
            return "it names " + line.split("GLOBAL", 1)[1].split()[0]
    return "an unsupported global"


def _existing_file(path: str | os.PathLike, context: str = "") -> Path:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{context}checkpoint {path} is a folder; name the file (model.pt, a .ckpt or .safetensors)")
    if not path.is_file():
        raise UserError(f"{context}checkpoint {path} does not exist")
    return path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (floating point ones as fp32) and the metadata of a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a safetensors file ({str(err).splitlines()[0][:200]})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, metadata


# ----------------------------------------------------------------------------------------------------------------
# To a ready model
@dataclass
class LoadedModel:
    model: nn.Module          # in eval mode, on the CPU, fp32
    model_name: str
    classes: tuple[str, ...]
    config: dict              # the training recipe (TrainConfig.to_dict())
    path: Path
    data_source: str | None = None  # where the run read CIFAR-10 (model.pt records it; a Lightning .ckpt does not)

    def runtime(self, device: str | None = None) -> Runtime:
        """The device and autocast dtype the trainer used (its ``precision``), for inference the same way; a run
        trained in fp16 on a GPU is read with this CPU's ``auto`` choice (CPUs have no fp16 path here)."""
        dev = pick_device(device)
        precision = self.config.get("precision", "auto")
        if precision == "fp16" and dev.type == "cpu":
            precision = "auto"
        return Runtime(dev, autocast_dtype(dev, precision))


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """A ``.pt`` from ``save_checkpoint``, a Lightning ``.ckpt`` or shipped ``.safetensors`` -> the model in eval
    mode + class names.

    Lightning is not imported: its checkpoint is a torch dict whose ``hyper_parameters`` carry the same
    model_name / model_kwargs / config / classes as the plain payload, and whose weights are prefixed ``model.``.
    """
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        state, meta = read_safetensors(path)
        if meta.get("format") != WEIGHTS_FORMAT:
            raise UserError(f"{path} is a safetensors file but not cifar_s12 weights (no {WEIGHTS_FORMAT!r} "
                            f"format in its metadata)")
        try:
            name, kwargs, config, classes = (meta["model"], json.loads(meta["model_kwargs"]),
                                             json.loads(meta["config"]), json.loads(meta["classes"]))
        except (KeyError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: its metadata is incomplete ({type(err).__name__}: {err})") from None
        data_source = None
    else:
        payload = read_checkpoint_file(path)
        if payload.get("format") == CHECKPOINT_FORMAT:
            missing = [key for key in ("model", "model_kwargs", "config", "classes", "state_dict")
                       if key not in payload]
            if missing:
                raise UserError(f"{path} is an incomplete cifar_s12 checkpoint (no {', '.join(missing)})")
            name, kwargs, config, classes = (payload["model"], payload["model_kwargs"], payload["config"],
                                             payload["classes"])
            state = payload["state_dict"]
        elif isinstance(payload.get("hyper_parameters"), dict) and "model_name" in payload["hyper_parameters"]:
            hp = payload["hyper_parameters"]
            name, kwargs, config, classes = (hp["model_name"], hp.get("model_kwargs", {}), hp.get("config", {}),
                                             hp.get("classes"))
            state = {k[len("model."):]: v for k, v in payload.get("state_dict", {}).items() if k.startswith("model.")}
        else:
            raise UserError(f"{path} is a torch file but not a cifar_s12 checkpoint (no model name and classes in it)")
        data_source = payload.get("data_source")
    if not isinstance(name, str) or not isinstance(kwargs, dict) or not isinstance(config, dict):
        raise UserError(f"{path}: its model name, arguments or recipe are not what cifar_s12 writes")
    if not classes or not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{path} does not name its classes (a list of class names)")
    if len(classes) != NUM_CLASSES:
        raise UserError(f"{path} names {len(classes)} classes; the models here predict {NUM_CLASSES}")
    model = _build(name, kwargs, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:])  # line 0 only says "Error(s)"
        raise UserError(f"{path}: its weights do not fit model {name!r}: {detail[:300]}") from None
    return LoadedModel(model.eval(), name, tuple(classes), dict(config), path, data_source)


def _build(name: str, kwargs: dict, path: Path) -> nn.Module:
    try:
        return build_model(name, **kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: cannot build model {name!r} ({err})") from None
