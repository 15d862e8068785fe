"""Low-VRAM switches for the diffusion stages: attention slicing, VAE slicing, model and sequential CPU offload.

A :class:`LowVram` names the switches; :func:`apply` sets them on a stage's modules (named ``unet``,
``controlnet``, ``text_encoder``, ``text_encoder_2``, ``vae``) and returns an :class:`Offloader`,
whose :meth:`~Offloader.phase` context brings a phase's modules to the execution device.

- ``attention_slicing``: every diffusers ``Attention`` of the UNet and ControlNet runs SDPA on at
  most ``n`` heads of one sample at a time ("auto": half the heads, "max": one). Unlike diffusers'
  ``set_attention_slice``, whose sliced processor materialises explicit score matrices and so
  needs MORE memory than SDPA's memory-efficient kernels (measured on the CPU, SD 1.5's first
  self-attention over a 64x64 latent, batch 2: SDPA 56 MiB, diffusers' slices of one head 176 MiB,
  of four 562 MiB; see tests/benchmarks/bench_lowvram.py), the slices still run SDPA: the same
  memory where SDPA has a memory-efficient kernel (ours: 66 MiB), and at most ``n`` score matrices
  where it falls back to its math kernel (which holds all 16: 2085 MiB).
- ``vae_slicing``: diffusers' VAE slicing decodes a batch one image at a time; the tiled VAE
  already runs one window of one image at a time, so that part is always on. What is left is
  the VAE's single-head mid-block attention over all positions of a window: it runs SDPA on
  chunks of :data:`VAE_QUERY_CHUNK` queries: a bound on the math kernel's score matrix (measured
  for the SD VAE over a 640 px window, 6400 queries: SDPA 82 MiB, chunked 83 MiB, math 378 MiB).
- ``offload="model"``: the modules are stored on the CPU; ``phase("text")`` moves the text
  encoders to the device, ``phase("denoise")`` the UNet and ControlNet, ``phase("vae")`` the VAE,
  and each goes back when its phase ends (phases nest). A module used outside its phase runs on
  the CPU. Our tiled VAE calls VAE submodules directly, so forward hooks on the VAE would not fire:
  hence explicit phases.
- ``offload="sequential"``: diffusers' leaf-level group offloading (on accelerate's
  ``send_to_device``; the ``diffusion`` extra has accelerate): each layer's weights are moved
  to the device just before it runs and back after, so submodules called directly (the tiled VAE,
  its GroupNorm sweeps) work, and ``module.device`` still names the execution device (accelerate's
  ``cpu_offload`` leaves the weights on the ``meta`` device, which breaks every ``x.to(vae.device)``).
  GroupNorms stay on the device (a few hundred KiB): the tiled VAE reads their weights outside
  their forward. Phases are no-ops.

On the CPU the offload switches move nothing (execution and storage device are the same).
:func:`memory_effect` says what the switches change in a stage's device working set.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

from ..errors import InputError

__all__ = ["AttentionSlicing", "ChunkedAttnProcessor", "LAYER_FRACTION", "LowVram", "Offload", "Offloader",
           "PHASES", "VAE_QUERY_CHUNK", "apply", "largest_layer_bytes", "memory_effect", "weight_bytes"]

AttentionSlicing = Literal["off", "auto", "max"] | int
Offload = Literal["none", "model", "sequential"]
OFFLOADS = ("none", "model", "sequential")
PHASES: dict[str, tuple[str, ...]] = {"text": ("text_encoder", "text_encoder_2"), "denoise": ("unet", "controlnet"),
                                      "vae": ("vae",)}
SLICED = ("unet", "controlnet")  # the modules attention slicing applies to
VAE_QUERY_CHUNK = 1024  # queries per SDPA call in the VAE's attention (CPU: bitwise equal, +25% for that op)
# Largest single layer (the unit sequential offload moves) over the model's weights, measured on the published
# architectures (tests/benchmarks/bench_lowvram.py): SD 1.5 UNet 3.43% (up_blocks.0.resnets.0.conv1),
# x2 upscaler UNet 2.85%, SD VAE 2.82%, CLIP ViT-L text encoder 30.8% (its token embedding).
LAYER_FRACTION = {"unet": 0.035, "controlnet": 0.035, "vae": 0.03, "text_encoder": 0.31, "text_encoder_2": 0.31}


@dataclass(frozen=True)
class LowVram:
    """The low-VRAM switches of a stage; the defaults change nothing (SDPA attention, no offload)."""

    attention_slicing: AttentionSlicing = "off"  # UNet/ControlNet heads per SDPA call: "auto" half, "max" one
    vae_slicing: bool = False  # the VAE's attention in chunks of VAE_QUERY_CHUNK queries
    offload: Offload = "none"  # "model": one phase's models on the device; "sequential": one layer

    def check(self) -> str | None:
        """One line saying what is wrong with a value, or None."""
        s = self.attention_slicing
        if isinstance(s, bool) or not (s in ("off", "auto", "max") if isinstance(s, str)
                                       else isinstance(s, int) and s >= 1):
            return f"attention_slicing must be 'off', 'auto', 'max' or a number of heads >= 1, got {s!r}"
        if not isinstance(self.vae_slicing, bool):
            return f"vae_slicing must be true or false, got {self.vae_slicing!r}"
        if self.offload not in OFFLOADS:
            return f"offload must be one of {', '.join(map(repr, OFFLOADS))}, got {self.offload!r}"
        return None


class ChunkedAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` with SDPA run piecewise: per sample, at most ``heads`` heads and
    ``queries`` query positions per call (None: all). The same result up to float rounding (bitwise on
    the CPU's SDPA kernel)."""

    def __init__(self, heads: int | Literal["auto"] | None = None, queries: int | None = None):
        self.heads, self.queries = heads, queries

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
        if shape4 is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        b, n_kv = hidden_states.shape[0], (hidden_states if encoder_hidden_states is None
                                           else encoder_hidden_states).shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n_kv, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = (_heads(p(x), b, attn.heads) for p, x in ((attn.to_q, hidden_states), (attn.to_k, context),
                                                             (attn.to_v, context)))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        heads = max(1, attn.heads // 2) if self.heads == "auto" else self.heads
        out = _sdpa_pieces(q, k, v, attention_mask, heads, self.queries)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2).to(q.dtype)))
        if shape4 is not None:
            out = out.transpose(-1, -2).reshape(shape4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _heads(x, batch: int, heads: int):
    """(B, N, H*d) -> (B, H, N, d), a view."""
    return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)


def _sdpa_pieces(q, k, v, mask, heads: int | None, queries: int | None):
    """SDPA of (B, H, N, d) tensors, ``heads`` heads of one sample and ``queries`` queries per call."""
    import torch.nn.functional as F

    b, h, n, _ = q.shape
    hs, qs = min(heads or h, h), min(queries or n, n)
    if heads is None and qs == n:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    out = q.new_empty(b, h, n, v.shape[-1])
    for i in range(b):
        for h0 in range(0, h, hs):
            hh = slice(h0, h0 + hs)
            for q0 in range(0, n, qs):
                qq = slice(q0, q0 + qs)
                m = None if mask is None else mask[i:i + 1, hh, qq if mask.shape[2] > 1 else slice(None)]
                out[i:i + 1, hh, qq] = F.scaled_dot_product_attention(q[i:i + 1, hh, qq], k[i:i + 1, hh],
                                                                      v[i:i + 1, hh], attn_mask=m)
    return out


# Set-up state per module (weak: a module that is dropped is forgotten), shared by every Offloader over it.
_SETUP: "weakref.WeakKeyDictionary[Any, tuple[LowVram, Any, dict]]" = weakref.WeakKeyDictionary()
_ACTIVE: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()  # phases holding a module


class Offloader:
    """A stage's modules under one :class:`LowVram`: runs their phases and can undo the switches."""

    def __init__(self, modules: dict[str, Any], low: LowVram, device, storage):
        self.modules, self.low, self.device, self.storage = modules, low, device, storage

    @property
    def moves(self) -> bool:
        """True if phases move modules (model offload to a device other than the storage device)."""
        return self.low.offload == "model" and self.device != self.storage

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Within: the modules of phase ``name`` ("text", "denoise", "vae") on the execution device.

        A no-op unless offload is "model" on a device other than the CPU. Phases nest; a module
        returns to the CPU when the last phase holding it ends (also on an error)."""
        if name not in PHASES:
            raise InputError(f"phase must be one of {', '.join(map(repr, PHASES))}, got {name!r}")
        held = []
        try:
            for m in [self.modules[n] for n in PHASES[name] if n in self.modules] if self.moves else []:
                _ACTIVE[m] = _ACTIVE.get(m, 0) + 1
                held.append(m)
                if _ACTIVE[m] == 1:
                    m.to(self.device)
            yield
        finally:
            for m in reversed(held):
                _ACTIVE[m] -= 1
                if _ACTIVE[m] == 0:
                    m.to(self.storage)

    def remove(self) -> None:
        """Undo the switches on these modules: default attention, no hooks, every module on the device."""
        for m in self.modules.values():
            setup = _SETUP.pop(m, None)
            if setup is None:
                continue
            for attn, processor in setup[2].items():
                attn.set_processor(processor)
            if setup[0].offload == "sequential":
                from diffusers.hooks import HookRegistry

                HookRegistry.check_if_exists_or_initialize(m).remove_hook("group_offloading", recurse=True)
            if setup[0].offload != "none":
                m.to(self.device)
            _ACTIVE.pop(m, None)


def _named_modules(components: Any) -> dict[str, Any]:
    """{name: torch module} from a Components, a mapping or (name, module) pairs; non-modules skipped."""
    import torch

    known = [n for names in PHASES.values() for n in names]
    if isinstance(components, (Mapping, list, tuple)):
        items = dict(components)
    else:
        items = {n: getattr(components, n, None) for n in known}
    modules = {n: m for n, m in items.items() if isinstance(m, torch.nn.Module)}
    unknown = sorted(set(modules) - set(known))
    if unknown:
        raise InputError(f"low-VRAM switches know the modules {', '.join(known)}; got {', '.join(unknown)}")
    return modules


def apply(components: Any, low: LowVram, device) -> Offloader:
    """Set ``low``'s switches on the modules of ``components`` (see the module docstring); return their Offloader.

    ``components``: a :class:`~tiledsr.diffusion.components.Components`, a mapping or (name, module)
    pairs; entries that are not torch modules (tokenizer, scheduler) are ignored. ``device``: where
    the modules compute. With offload, the modules are moved to the CPU here: load them there
    (in the device's dtype) so they never all sit on the device. Applying the same switches again
    is a no-op; a module already set up with other switches raises InputError (call
    :meth:`Offloader.remove` first). Also InputError for a bad ``low`` or an attention processor
    other than diffusers' default.
    """
    import torch

    # 1. Check inputs
    problem = low.check()
    if problem:
        raise InputError(problem)
    device, storage = torch.device(device), torch.device("cpu")
    modules = _named_modules(components)
    for name, m in modules.items():
        if m in _SETUP and _SETUP[m][:2] != (low, device):
            raise InputError(f"{name} is already set up with {_SETUP[m][0]} on {_SETUP[m][1]}; a module shared by "
                             f"two stages needs the same low-VRAM switches")
    todo = {n: m for n, m in modules.items() if m not in _SETUP}
    saved = {n: _processors(n, m, low) for n, m in todo.items()}  # raises before anything changes

    # 2. Attention: UNet/ControlNet heads in slices, the VAE's queries in chunks
    for name, m in todo.items():
        chunked = _chunked(name, low)
        for attn in saved[name]:
            attn.set_processor(chunked)

    # 3. Offload: storage on the CPU; layer hooks for sequential offload
    for name, m in todo.items():
        if low.offload == "model":
            m.to(storage)
        elif low.offload == "sequential":
            _offload_layers(m, device, storage)
        _SETUP[m] = (low, device, saved[name])
    return Offloader(modules, low, device, storage)


def _chunked(name: str, low: LowVram) -> ChunkedAttnProcessor | None:
    """The processor ``low`` gives the attention of module ``name``, or None (unchanged)."""
    if name in SLICED and low.attention_slicing != "off":
        return ChunkedAttnProcessor(heads=1 if low.attention_slicing == "max" else low.attention_slicing)
    if name == "vae" and low.vae_slicing:
        return ChunkedAttnProcessor(queries=VAE_QUERY_CHUNK)
    return None


def _processors(name: str, module, low: LowVram) -> dict:
    """{Attention: its processor now} for the attention ``low`` changes in ``module``; InputError for a
    processor other than diffusers' default (its math is what ChunkedAttnProcessor restates)."""
    if _chunked(name, low) is None:
        return {}
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    found = {m: m.processor for m in module.modules() if isinstance(m, Attention)}
    for attn, p in found.items():
        if not isinstance(p, (AttnProcessor, AttnProcessor2_0)):
            raise InputError(f"{name}: attention slicing supports diffusers' default attention processor, "
                             f"got {type(p).__name__}")
    return found


def _offload_layers(module, device, storage) -> None:
    """Leaf-level group offloading of ``module`` (weights on ``storage``, each layer on ``device`` while it
    runs), GroupNorms excepted: they stay on ``device``."""
    import torch
    from diffusers.hooks import HookRegistry, apply_group_offloading

    apply_group_offloading(module, onload_device=device, offload_device=storage, offload_type="leaf_level")
    for gn in module.modules():
        if isinstance(gn, torch.nn.GroupNorm):
            HookRegistry.check_if_exists_or_initialize(gn).remove_hook("group_offloading", recurse=False)
            gn.to(device)


def weight_bytes(module) -> int:
    """Bytes of ``module``'s parameters and buffers (also for a module on the meta device)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def largest_layer_bytes(module) -> int:
    """Bytes of the largest set of parameters and buffers held directly by one submodule: what sequential
    offload moves at once (GroupNorms excluded: they stay on the device)."""
    import torch

    return max((sum(t.numel() * t.element_size() for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])
                for m in module.modules() if not isinstance(m, torch.nn.GroupNorm)), default=0)


def memory_effect(low: LowVram, estimate: Mapping[str, int], weights: Mapping[str, int], *, device: Any = "cuda",
                  layer: int | None = None) -> dict[str, int]:
    """A stage's memory estimate under ``low``: ``estimate`` plus ``"weights"``, the weight bytes on the device.

    ``estimate``: the stage's ``memory_estimate`` (``"tile"``: activations of a tile batch, ``"canvas"``),
    returned unchanged: it assumes SDPA's memory-efficient kernels, which hold no score matrix, so the
    slicing switches leave it as is (measured; they bound the math kernel's score matrices where SDPA
    falls back to it). ``weights``: bytes per module name (see :data:`PHASES`) in the run dtype.
    ``"weights"`` is: every module (no offload, or on the CPU, where the modules are stored anyway);
    the heaviest phase (model offload); the largest layer, ``layer`` or :data:`LAYER_FRACTION` of
    each module (sequential offload). Add it to ``"tile"`` where the budget is the device's memory.
    """
    total = sum(weights.values())
    if low.offload == "none" or str(device).split(":")[0] == "cpu":
        resident = total
    elif low.offload == "model":
        resident = max((sum(weights.get(n, 0) for n in names) for names in PHASES.values()), default=0)
    else:
        resident = layer if layer is not None else int(max(
            (LAYER_FRACTION.get(n, 1.0) * b for n, b in weights.items()), default=0))
    return {**estimate, "weights": min(resident, total)}
