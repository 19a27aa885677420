"""Import the thesis's trained Keras models (HDF5, Keras 2.x) into brainae's models, without TensorFlow.

The file is read with h5py only: the ``model_config`` JSON attribute gives the layer graph (names, classes,
inbound layers), ``model_weights/<layer>/`` the arrays. Each architecture maps its torch modules to the Keras
layer names of the thesis's code; the few auto-named layers (``conv2d``, ``batch_normalization_3``, the
Myronenko blocks' shortcut convolutions) are found through the graph instead (the model output, the BN that
follows a named conv, the 1x1 conv feeding a named ``Add``). Every weighted Keras layer must be used exactly
once and every shape must fit, otherwise :class:`~brainae.errors.BrainaeError` says what did not.

Conventions: Keras conv kernels are H x W x in x out (torch: out x in x H x W); transposed-conv kernels are
H x W x out x in (torch: in x out x H x W); BN gamma/beta/moving_mean/moving_variance map to
weight/bias/running_mean/running_var. The padding conventions live in :mod:`brainae.models.blocks`.

Exactness: on CPU (float32) the imported models reproduce the Keras reference outputs
(``../shared/data/seed-weights/reference``) to within 1e-5, float32 rounding: the largest difference measured
over the four seed models is 6.1e-7 (``tests/test_keras_import.py`` checks < 1e-5, leaving room for other CPUs'
summation order). On an NVIDIA GPU, torch lets cuDNN convolutions use TF32 by default, which moves outputs by up
to about 1e-3 (H200, measured); set ``torch.backends.cudnn.allow_tf32 = False`` for float32 numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainae.card import Source
from brainae.errors import BrainaeError
from brainae.models.registry import architecture_names, build_model, count_parameters
from brainae.volume import THESIS_PREPROCESSING

WEIGHTED_CLASSES = ("Conv2D", "Conv2DTranspose", "BatchNormalization")

THESIS_LICENSE = "MIT"
THESIS_CREDIT = "Adrián Arnaiz-Rodríguez, 2020"
THESIS_NOTE = "published with the thesis 'Deep Convolutional Autoencoder for control brain MRI'"


@dataclass
class KerasLayer:
    """One layer of the Keras graph."""

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: list[str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class KerasModelFile:
    """What an HDF5 Keras model file holds, as far as the import needs it."""

    path: Path
    layers: dict[str, KerasLayer]
    outputs: list[str]
    keras_version: str | None

    def find(self, ref: str, arch: str) -> KerasLayer:
        """Resolve a layer reference: a name, ``@output``, ``@bn_after:NAME`` or ``@shortcut:ADD``."""
        if ref == "@output":
            if len(self.outputs) != 1:
                raise self._mismatch(arch, f"expected one output layer, found {len(self.outputs)}")
            return self.layers[self.outputs[0]]
        if ref.startswith("@bn_after:"):
            src = ref.split(":", 1)[1]
            hits = [
                la
                for la in self.layers.values()
                if la.class_name == "BatchNormalization" and la.inbound == [src]
            ]
            if len(hits) != 1:
                raise self._mismatch(arch, f"no batch-normalization layer after layer {src!r}")
            return hits[0]
        if ref.startswith("@shortcut:"):
            add = ref.split(":", 1)[1]
            if add not in self.layers:
                raise self._mismatch(arch, f"no layer named {add!r}")
            hits = [
                self.layers[n]
                for n in self.layers[add].inbound
                if n in self.layers
                and self.layers[n].class_name == "Conv2D"
                and list(self.layers[n].config.get("kernel_size", [])) == [1, 1]
            ]
            if len(hits) != 1:
                raise self._mismatch(arch, f"no 1x1 shortcut convolution feeding layer {add!r}")
            return hits[0]
        if ref not in self.layers:
            raise self._mismatch(arch, f"no layer named {ref!r}")
        return self.layers[ref]

    def _mismatch(self, arch: str, what: str) -> BrainaeError:
        guess = detect_architecture(self, strict=False)
        hint = (
            f"it looks like {guess!r}: use --arch {guess} or leave --arch out"
            if guess and guess != arch
            else f"is it a Keras model of the thesis's {arch!r}?"
        )
        return BrainaeError(f"{self.path.name}: weights do not fit architecture {arch!r}: {what}; {hint}")


def _inbound_names(layer: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for node in layer.get("inbound_nodes", []) or []:
        if isinstance(node, list):  # Keras 2.x: [[name, node_index, tensor_index, kwargs], ...]
            names.extend(str(entry[0]) for entry in node if isinstance(entry, list) and entry)
    return names


def read_keras_h5(path: str | Path) -> KerasModelFile:
    """Read the layer graph and weights of a Keras 2.x HDF5 model file with h5py.

    Raises:
        BrainaeError: missing file, not HDF5, or no Keras model inside.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BrainaeError(f"{path}: no such file; give the path of a Keras .h5 model")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise BrainaeError(
            f"{path.name}: not an HDF5 file; give a Keras .h5 model saved with model.save"
        ) from None
    with f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise BrainaeError(
                f"{path.name}: no Keras 'model_config' in this HDF5 file (weights only, or not Keras); "
                "give a full model saved with model.save(...h5)"
            )
        try:
            config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
            layer_cfgs = config["config"]["layers"]
        except (ValueError, KeyError, TypeError):
            raise BrainaeError(
                f"{path.name}: unreadable Keras model_config; not a Keras 2.x model file"
            ) from None
        outputs = [str(o[0]) for o in config["config"].get("output_layers", []) if o]
        layers: dict[str, KerasLayer] = {}
        for cfg in layer_cfgs:
            name = str(cfg.get("config", {}).get("name", cfg.get("name")))
            layers[name] = KerasLayer(
                name, str(cfg.get("class_name")), cfg.get("config", {}), _inbound_names(cfg)
            )
        root = f["model_weights"] if "model_weights" in f else f
        for name, layer in layers.items():
            if layer.class_name not in WEIGHTED_CLASSES or name not in root:
                continue
            group = root[name]
            for wname in group.attrs.get("weight_names", []):
                wname = wname.decode() if isinstance(wname, bytes) else str(wname)
                short = wname.split("/")[-1].split(":")[0]
                layer.weights[short] = np.asarray(group[wname], dtype=np.float32)
        version = f.attrs.get("keras_version")
        version = version.decode() if isinstance(version, bytes) else (str(version) if version else None)
    return KerasModelFile(path, layers, outputs, version)


def detect_architecture(keras: KerasModelFile, *, strict: bool = True) -> str | None:
    """Which of brainae's architectures a thesis Keras model is, from its layer names.

    Raises:
        BrainaeError: (``strict``) the file is not one of the thesis's models.
    """
    names = set(keras.layers)
    classes = {la.class_name for la in keras.layers.values()}
    if "Conv_Downsample_1" in names:
        return "myronenko"
    if {"DConv3", "SKIP_CONN1"} <= names:
        return "skip-cae"
    if "FP_RB1_C1" in names:
        return "res-unet" if "Concatenate" in classes else "shallow-res-preact"
    if "RB1_C1" in names:
        return "shallow-res-original"
    if strict:
        raise BrainaeError(
            f"{keras.path.name}: not one of the thesis's Keras autoencoders (no layer FP_RB1_C1, RB1_C1, "
            f"DConv3 or Conv_Downsample_1); importable architectures: {', '.join(architecture_names())}"
        )
    return None


def _filters(keras: KerasModelFile, ref: str, arch: str) -> int:
    layer = keras.find(ref, arch)
    try:
        return int(layer.config["filters"])
    except (KeyError, TypeError, ValueError):
        raise keras._mismatch(arch, f"layer {layer.name!r} has no filter count") from None


def _in_channels(keras: KerasModelFile, arch: str) -> int:
    kernel = keras.find("Conv1", arch).weights.get("kernel")
    if kernel is None or kernel.ndim != 4:
        raise keras._mismatch(arch, "layer 'Conv1' has no 4-D kernel")
    return int(kernel.shape[2])


def _arch_kwargs(keras: KerasModelFile, arch: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"in_channels": _in_channels(keras, arch)}
    latent_ref = {
        "shallow-res-original": "RB3_C2",
        "shallow-res-preact": "FP_RB3_C2",
        "res-unet": "FP_RB3_C2",
        "skip-cae": "Conv3",
        "myronenko": "Conv_Downsample_3",
    }[arch]
    kwargs["latent_channels"] = _filters(keras, latent_ref, arch)
    if arch == "myronenko":
        rates = [la.config.get("rate") for la in keras.layers.values() if la.class_name == "SpatialDropout2D"]
        if rates and rates[0] is not None:
            kwargs["dropout"] = float(rates[0])
    return kwargs


def _up(i: int, bn_name: str) -> list[tuple[str, str]]:
    return [(f"up{i}.conv", f"UP{i}_C1"), (f"up{i}.bn", bn_name)]


def _layer_map(arch: str) -> list[tuple[str, str]]:
    """(torch module name, Keras layer reference) pairs of architecture ``arch``."""
    pairs: list[tuple[str, str]] = []
    if arch in ("shallow-res-preact", "res-unet", "shallow-res-original"):
        pairs.append(("stem", "Conv1"))
        pre = arch != "shallow-res-original"
        prefixes = ("FP_RB1", "FP_RB2_same_dim", "FP_RB3") if pre else ("RB1", "RB2_same_dim", "RB3")
        for k, p in enumerate(prefixes, start=1):
            b = f"block{k}"
            if pre:
                pairs += [(f"{b}.bn1", f"{p}_BN_R1inner_BN"), (f"{b}.bn2", f"{p}_BN_R2inner_BN")]
            else:
                pairs += [(f"{b}.bn1", f"{p}inner_BN"), (f"{b}.bn2", f"{p}_BN")]
            pairs += [(f"{b}.conv1", f"{p}_C1"), (f"{b}.conv2", f"{p}_C2")]
            if k != 2:
                pairs.append((f"{b}.shortcut", f"{p}_CAdjust"))
        for i in (1, 2, 3):
            pairs += _up(i, f"UP{i}_BN_RUPinner_BN")
        pairs.append(("head.conv", "@output"))
    elif arch == "skip-cae":
        for i in (1, 2, 3):
            pairs += [(f"enc{i}.conv", f"Conv{i}"), (f"enc{i}.bn", f"@bn_after:Conv{i}")]
        for i in (3, 2, 1):
            pairs += [(f"dec{i}.conv", f"DConv{i}"), (f"dec{i}.bn", f"@bn_after:DConv{i}")]
        pairs.append(("head.conv", "@output"))
    elif arch == "myronenko":
        pairs.append(("stem", "Conv1"))
        blocks = {
            "block32": "GB_32_1",
            "block64a": "GB_64_1",
            "block64b": "GB_64_2",
            "block128a": "GB_128_1",
            "block128b": "GB_128_2",
        }
        for b, p in blocks.items():
            pairs += [
                (f"{b}.bn1", f"{p}_ReLu1inner_BN"),
                (f"{b}.conv1", f"{p}_C1"),
                (f"{b}.bn2", f"{p}_ReLu2inner_BN"),
                (f"{b}.conv2", f"{p}_C2"),
                (f"{b}.shortcut", f"@shortcut:{p}_ResSUM"),
            ]
        pairs += [(f"down{i}", f"Conv_Downsample_{i}") for i in (1, 2, 3)]
        for i in (1, 2, 3):
            pairs += _up(i, f"UP{i}_ReLu_UPinner_BN")
        pairs.append(("head.conv", "@output"))
    else:  # pragma: no cover - guarded by the caller
        raise BrainaeError(f"unknown architecture {arch!r}; valid names: {', '.join(architecture_names())}")
    return pairs


def _torch_tensors(module: nn.Module, layer: KerasLayer) -> dict[str, np.ndarray]:
    """The Keras layer's arrays, renamed and transposed to ``module``'s parameter layout."""
    w = layer.weights
    if isinstance(module, nn.BatchNorm2d):
        keys = {
            "gamma": "weight",
            "beta": "bias",
            "moving_mean": "running_mean",
            "moving_variance": "running_var",
        }
        return {t: w[k] for k, t in keys.items() if k in w}
    out = {}
    if "kernel" in w:
        # Conv2D: H W in out -> out in H W; Conv2DTranspose: H W out in -> in out H W (same permutation).
        out["weight"] = (
            np.ascontiguousarray(w["kernel"].transpose(3, 2, 0, 1)) if w["kernel"].ndim == 4 else w["kernel"]
        )
    if "bias" in w:
        out["bias"] = w["bias"]
    return out


_EXPECTED_CLASS = {
    nn.BatchNorm2d: "BatchNormalization",
    nn.ConvTranspose2d: "Conv2DTranspose",
    nn.Conv2d: "Conv2D",
}


def _expected_class(module: nn.Module) -> str:
    for cls, name in _EXPECTED_CLASS.items():
        if isinstance(module, cls):
            return name
    return type(module).__name__


def _mapped_state(
    keras: KerasModelFile, arch: str, model: nn.Module
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The model's state dict from the Keras layers (torch layout), and the Keras layers used; every weighted
    Keras layer must be used exactly once, with fitting shapes."""
    modules = dict(model.named_modules())
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    for mod_name, ref in _layer_map(arch):
        module = modules[mod_name]
        layer = keras.find(ref, arch)
        if layer.class_name != _expected_class(module):
            raise keras._mismatch(
                arch, f"layer {layer.name!r} is a {layer.class_name}, expected {_expected_class(module)}"
            )
        if layer.name in used:
            raise keras._mismatch(arch, f"layer {layer.name!r} would be used twice")
        used.add(layer.name)
        arrays = _torch_tensors(module, layer)
        for pname, target in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            if pname == "num_batches_tracked":
                continue
            if pname not in arrays:
                raise keras._mismatch(arch, f"layer {layer.name!r} has no '{pname}' weights")
            arr = arrays[pname]
            if tuple(arr.shape) != tuple(target.shape):
                raise keras._mismatch(
                    arch,
                    f"layer {layer.name!r} {pname} has shape {tuple(arr.shape)}, the model needs "
                    f"{tuple(target.shape)} (torch layout)",
                )
            state[f"{mod_name}.{pname}"] = torch.from_numpy(np.array(arr, dtype=np.float32))
    left = [
        la.name
        for la in keras.layers.values()
        if la.class_name in WEIGHTED_CLASSES and la.weights and la.name not in used
    ]
    if left:
        raise keras._mismatch(arch, f"{len(left)} weighted layer(s) not used, e.g. {left[0]!r}")
    return state, used


def import_keras(h5_path: str | Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build a brainae model holding the weights of one of the thesis's Keras models.

    Args:
        h5_path: Keras 2.x HDF5 file saved with ``model.save`` (e.g. ``res_skip_cae_MSE_AUG_...h5``).
        arch: architecture name; ``None`` detects it from the layer names.

    Returns:
        ``(model, info)``: the model in eval mode (float32, CPU) and a dict with ``arch``, ``arch_kwargs``,
        ``file``, ``keras_version``, ``parameters``, ``layers`` (number of weighted layers mapped) and the
        checkpoint card of an imported model: ``preprocessing`` (:data:`brainae.volume.THESIS_PREPROCESSING`)
        and ``source`` (a :class:`~brainae.card.Source` with the thesis's licence and credit).

    Raises:
        BrainaeError: the file is missing / not a Keras model / not one of the thesis's architectures, or its
            weights do not fit ``arch`` (the message names the layer and the shapes).
    """
    keras = read_keras_h5(h5_path)
    if arch is None:
        arch = detect_architecture(keras)
    elif arch not in architecture_names():
        raise BrainaeError(f"unknown architecture {arch!r}; valid names: {', '.join(architecture_names())}")
    assert arch is not None
    kwargs = _arch_kwargs(keras, arch)
    model = build_model(arch, **kwargs)
    state, used = _mapped_state(keras, arch, model)
    bad = [k for k, t in state.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise BrainaeError(
            f"{h5_path}: {len(bad)} weight array(s) hold NaN/Inf values (first: {bad[0]}); the file is damaged or "
            "the Keras training diverged: use another .h5 file"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:  # pragma: no cover - the layer maps cover every module
        raise keras._mismatch(arch, f"unmapped parameters {missing[:3]}")
    model.eval()
    info = {
        "arch": arch,
        "arch_kwargs": dict(model.brainae_arch_kwargs),
        "file": keras.path.name,
        "keras_version": keras.keras_version,
        "parameters": count_parameters(model),
        "layers": len(used),
        "preprocessing": THESIS_PREPROCESSING,
        "source": Source(
            license=THESIS_LICENSE,
            credit=THESIS_CREDIT,
            kind="keras-h5",
            file=keras.path.name,
            note=THESIS_NOTE,
            details={"keras_version": keras.keras_version},
        ),
    }
    return model, info
