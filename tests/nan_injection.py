"""A run that diverges midway, for the NaN tests: a module whose output turns NaN from its
``calls``-th call on, whatever form the output takes (a tensor, a tuple led by one, diffusers'
output with ``.sample``), through a forward hook: the module itself is what the code under test
calls, with all its attributes."""

from contextlib import contextmanager

import torch


def _nan(out):
    if isinstance(out, torch.Tensor):
        return out * float("nan")
    if isinstance(out, tuple):  # diffusers' models called with return_dict=False
        return (_nan(out[0]),) + tuple(out[1:])
    out.sample = out.sample * float("nan")  # diffusers' UNet2DOutput and kin
    return out


@contextmanager
def nan_from_call(module: torch.nn.Module, calls: int):
    """While open, ``module``'s output is NaN from its ``calls``-th call on (1 = the first)."""
    seen = 0

    def hook(_module, _args, out):
        nonlocal seen
        seen += 1
        return _nan(out) if seen >= calls else None

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()
