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

__all__ = ["resolve_device"]


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
