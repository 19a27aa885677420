"""The one device resolver: what ``--device`` means for every command (apply, fit, evaluate, demo).

``"auto"`` is CUDA when torch sees a GPU, else the CPU (Apple's ``mps`` only when asked by name: the CPU is
always correct, MPS lacks some operations); other names are passed to :class:`torch.device`, with one clear
error for an unknown name or an accelerator that is not there.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

from brainae.errors import BrainaeError

__all__ = ["has_bf16_units", "resolve_device"]


def resolve_device(device: str | object = "cpu"):
    """``"auto"`` -> CUDA if available, else CPU; other names as ``torch.device`` (clear error if absent).

    Raises:
        BrainaeError: an unknown device name, or CUDA / MPS asked for where it is not available.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BrainaeError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BrainaeError(f"device {device!r}: CUDA is not available here; use --device cpu or auto")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise BrainaeError(f"device {device!r}: MPS is not available here; use --device cpu or auto")
    return dev


def has_bf16_units(dev) -> bool:
    """Whether ``dev`` (a torch device) computes bfloat16 fast: a GPU, or a CPU with bfloat16 matrix units
    (Intel AMX or AVX-512 BF16), where bfloat16 autocast is 2-3x faster than float32. Training runs under it
    there (:mod:`brainae.fit`), and so does the denoiser's network on large volumes (:mod:`brainae.infer`)."""
    if dev.type == "cuda":
        return True
    if dev.type != "cpu":
        return False
    import torch

    probes = [
        getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    ]
    try:
        return any(bool(p()) for p in probes if p is not None)
    except Exception:  # a private probe changed: fall back to float32
        return False
