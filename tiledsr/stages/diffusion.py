"""What the diffusion stages share: model loading, the VAE codec, tiles in latent units."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

from ..diffusion.lowvram import AttentionSlicing, LowVram, Offload
from ..tiling import TileGrid, make_grid
from .base import Stage, StageTiling

__all__ = ["DiffusionConfig", "DiffusionStage", "Fusion", "SCHEDULERS"]

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}
VAE_FACTOR = 8  # SD 1.x/2.x VAEs; the loaded VAE's own factor is used at run time
Scheduler = Literal["default", "ddim", "euler", "euler-ancestral", "dpm++"]
Fusion = Literal["overlap", "shifted"]


@dataclass(frozen=True)
class DiffusionConfig(StageTiling):
    """Options every diffusion stage has: ``model`` (hub id or local diffusers folder), prompts, steps, guidance,
    and the low-VRAM switches (see :mod:`tiledsr.diffusion.lowvram`): ``attention_slicing`` ("off", "auto",
    "max" or heads per call), ``vae_slicing``, ``offload`` ("none", "model", "sequential").

    ``fusion`` (the stages that denoise the whole latent canvas tile by tile every step):
    "overlap" blends overlapping tiles (MultiDiffusion); "shifted" runs tiles that do not overlap
    and moves the tile grid every step by an offset drawn from the seed and the step (SpotDiffusion),
    so its lines never settle into seams; the overlap setting is not used then (see
    :func:`tiledsr.diffusion.loop.fused_grid`)."""

    model: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.5
    attention_slicing: AttentionSlicing = "off"
    vae_slicing: bool = False
    offload: Offload = "none"
    fusion: Fusion = "overlap"

    @property
    def low_vram(self) -> LowVram:
        return LowVram(self.attention_slicing, self.vae_slicing, self.offload)

    def check(self) -> str | None:
        problem = self.low_vram.check()
        if problem:
            return problem
        if not self.model:
            return "model: give a hub id or a local diffusers folder"
        if not 1 <= self.steps <= 1000:
            return f"steps must be in 1..1000, got {self.steps}"
        if self.guidance < 0:
            return f"guidance must be >= 0, got {self.guidance}"
        return None


class DiffusionStage(Stage):
    """Base for stages built on diffusers components; loads them in ``load()``."""

    unet_multiple = 8  # latent pixels the UNet needs tiles to be multiples of (refined at load)
    factor = VAE_FACTOR  # output pixels per latent pixel (refined at load from the VAE)
    prompt_kind = "sd"  # "sd" or "upscaler": how the prompt is embedded

    def missing_models(self) -> list[str]:
        from ..diffusion.components import is_available, missing_message

        try:
            return [] if is_available(self.config.model) else [missing_message(self.config.model)]
        except ImportError:  # huggingface_hub comes with the diffusion extra
            return [f"stage {self.type} needs the diffusion extra: pip install 'tiledsr[diffusion]'"]

    def load(self) -> None:
        """Load the components (:meth:`load_models`), set the low-VRAM switches and encode the prompt
        (:meth:`switch_on`). With CPU offload the models are loaded on the CPU in the device's
        precision and moved to the device phase by phase (:meth:`phase`)."""
        self.load_models()
        self.switch_on()

    def load_models(self) -> None:
        """The components and the VAE codec; stages with more models (a ControlNet) add them to
        :attr:`extra_modules` here."""
        from ..diffusion.codec import LatentCodec
        from ..diffusion.components import load_components

        c = self.config
        self.components = comp = load_components(c.model, self.storage_device(), self.load_precision())
        self.codec = LatentCodec(comp.vae, self.tiling, phase=lambda: self.phase("vae"))
        self.factor = self.codec.factor
        self.unet_multiple = 2 ** (len(comp.unet.config.down_block_types) - 1)
        self.offloader = None
        self.extra_modules: dict[str, Any] = {}

    def storage_device(self) -> str:
        """Where the weights live: the CPU under offload, else the run's device."""
        return "cpu" if self.config.offload != "none" else self.runtime.device

    def load_precision(self) -> str:
        """The run's precision resolved for its device ("auto": fp16 on CUDA, even when stored on the CPU)."""
        p, device = self.runtime.precision, self.runtime.device
        return ("fp16" if device.startswith("cuda") else "fp32") if p == "auto" else p

    def switch_on(self) -> None:
        """Apply the low-VRAM switches to the components and :attr:`extra_modules` (a ControlNet), then
        encode the prompt (in the text phase)."""
        from ..diffusion import lowvram

        comp = self.components
        modules = {n: getattr(comp, n) for n in ("unet", "text_encoder", "text_encoder_2", "vae")}
        self.offloader = lowvram.apply({**modules, **self.extra_modules}, self.config.low_vram, self.runtime.device)
        with self.phase("text"):
            self.encode_prompt()

    def phase(self, name: str):
        """Context in which phase ``name`` ("text", "denoise", "vae") runs: its models on the device
        under model offload; a no-op otherwise."""
        off = getattr(self, "offloader", None)
        return off.phase(name) if off is not None else contextlib.nullcontext()

    def encode_prompt(self) -> None:
        """The prompt embeddings for this model kind, once per run."""
        from ..diffusion import text

        c, comp = self.config, self.components
        if comp.kind == "sdxl":
            if self.prompt_kind != "sd":
                from ..errors import InputError

                raise InputError(f"stage {self.type} cannot run the SDXL model {c.model!r}; use it with img2img")
            zero = bool((comp.flags or {}).get("force_zeros_for_empty_prompt", True))
            self.embeds = text.encode_sdxl_prompt([comp.tokenizer, comp.tokenizer_2],
                                                  [comp.text_encoder, comp.text_encoder_2], c.prompt,
                                                  c.negative_prompt, guidance=c.guidance, zero_negative=zero)
            return
        encode = text.encode_upscaler_prompt if self.prompt_kind == "upscaler" else text.encode_sd_prompt
        self.embeds = encode(comp.tokenizer, comp.text_encoder, c.prompt, c.negative_prompt, guidance=c.guidance)

    def time_ids(self, picture: tuple[int, int] | None = None, offset: tuple[int, int] = (0, 0)):
        """SDXL's per-tile size conditioning (None for SD 1.x/2.x): tiles are crops at ``offset`` (y, x)
        of a ``picture`` (H, W) in pixels (None: the canvas being denoised is the picture). A model
        whose model_index.json asks for an aesthetic score (a refiner) gets diffusers' 6.0 / 2.5."""
        from ..diffusion.conditioning import TimeIds

        comp = self.components
        if comp.kind != "sdxl":
            return None
        aesthetic = (6.0, 2.5) if (comp.flags or {}).get("requires_aesthetics_score") else None
        return TimeIds(self.factor, picture, offset, aesthetic)

    @property
    def seed(self) -> int:
        return 0 if self.runtime.seed is None else self.runtime.seed

    def latent_tiling(self) -> dict[str, Any]:
        """tile / overlap / blend / batch / fusion for the loop, tile and overlap converted from output
        pixels to latent pixels."""
        f, t = self.factor, self.tiling
        tile = max(2 * self.unet_multiple, t.tile // f)  # the UNet's deepest level needs >= 2x2
        return {"tile": tile, "overlap": min(t.overlap // f, tile - 1), "blend": t.blend, "batch": t.batch,
                "fusion": self.fusion}

    @property
    def fusion(self) -> str:
        """How the latent tiles are fused: "overlap" or "shifted" (see :class:`DiffusionConfig`)."""
        return getattr(self.config, "fusion", "overlap")

    def fusion_note(self) -> str:
        """``", shifted fusion (...)"`` for :meth:`describe` when the grid moves every step, else ""."""
        if self.fusion != "shifted":
            return ""
        return ", shifted fusion: non-overlapping tiles, grid moved every step, overlap unused"

    def grid(self, height: int, width: int) -> TileGrid:
        """The tiles in output pixels; for shifted fusion the grid at offset 0 (every step moves it)."""
        oh, ow = self.output_size(height, width)
        m = self.factor * self.unet_multiple
        tile = max(2 * m, self.tiling.tile - self.tiling.tile % m)
        if self.fusion == "shifted" and min(oh, ow) >= 2 * m:
            from ..diffusion.loop import shifted_grid

            return shifted_grid(oh, ow, tile, m)
        return make_grid(oh, ow, tile, min(self.tiling.overlap, tile - m), m)

    def redundancy(self, height: int, width: int) -> float:
        """Pixels computed over pixels needed; for shifted fusion the mean over the offsets drawn."""
        if self.fusion != "shifted":
            return super().redundancy(height, width)
        from ..diffusion.loop import shifted_redundancy

        oh, ow = self.output_size(height, width)
        m = self.factor * self.unet_multiple
        if min(oh, ow) < 2 * m:
            return super().redundancy(height, width)
        return shifted_redundancy(oh, ow, max(2 * m, self.tiling.tile - self.tiling.tile % m), m)

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        """``tile``: the models' weights (counted from their files, or the published models') plus the
        larger of the UNet's activations for a batch of tiles and the tiled VAE's working set."""
        oh, ow = self.output_size(height, width)
        g = self.grid(height, width)
        weights, per_pixel = self.weight_bytes()
        samples = self.tiling.batch * (2 if self.config.guidance > 1 else 1)  # classifier-free guidance doubles
        th, tw = g.tile_h, g.tile_w
        if self.fusion == "shifted":  # its tiles vary in size, up to about 1.5x the nominal side
            from ..diffusion.loop import largest_side

            m = self.factor * self.unet_multiple
            th, tw = min(oh, largest_side(th, m)), min(ow, largest_side(tw, m))
        unet = per_pixel * (th // self.factor) * (tw // self.factor) * samples
        return {"tile": self.resident_weights() + max(unet, self.vae_memory(oh, ow)),
                "canvas": 3 * oh * ow * channels * 4}

    def weight_bytes(self) -> tuple[dict[str, int], int]:
        """({module: bytes of its weights as loaded}, activation bytes per latent pixel of one UNet sample),
        known without loading: the UNet, text encoders and ControlNet in the run's precision, the VAE
        in float32. Activations measured on the CPU (tests/benchmarks/bench_diffusion_models.py, 2026-12-02:
        61 KB SD 1.5, 79 KB with a ControlNet, 54 KB SDXL at 512 px tiles), taken with a 1.5x margin."""
        from ..diffusion.footprint import model_kind, parameter_counts

        c = self.config
        key = (c.model, getattr(c, "controlnet", ""), self.runtime.precision, self.runtime.device)
        cached = getattr(self, "_weights", None)
        if cached is None or cached[0] != key:
            half = self.load_precision() in ("fp16", "bf16")
            counts = parameter_counts(c.model, key[1])
            sizes = {k: n * (4 if k == "vae" or not half else 2) for k, n in counts.items()}
            per = {"sd": 92, "sdxl": 81}[model_kind(c.model)] * 1024 + (27 * 1024 if key[1] else 0)
            self._weights = cached = (key, sizes, per if not half else per // 2)
        return cached[1], cached[2]

    def resident_weights(self) -> int:
        """Bytes of weights on the run's device at once under the low-VRAM switches (all of them on the
        CPU; the heaviest phase with model offload; about one layer with sequential offload)."""
        from ..diffusion.lowvram import memory_effect

        return memory_effect(self.config.low_vram, {}, self.weight_bytes()[0], device=self.runtime.device)["weights"]

    def vae_memory(self, height: int, width: int) -> int:
        """Bytes the tiled VAE holds to decode (or encode) a ``height`` x ``width`` image at this stage's
        tiling: the one-pass mode's paused tensors when they fit in memory, else one window's activations."""
        from ..diffusion.vae import context_for, one_pass_bytes, one_pass_fits, vae_overlap

        t, f = self.tiling, self.factor
        state = one_pass_bytes(height, width, tile=t.tile, overlap=vae_overlap(t.overlap), f=f)
        window = (min(t.tile, max(height, width)) + 2 * context_for(None, t.tile, f) * f) ** 2
        return state if state and one_pass_fits(state) else 8 * window * 128 * 4

    def scheduler(self):
        """A fresh scheduler: the model's own, or the one named in the config."""
        import diffusers

        base = self.components.scheduler
        name = getattr(self.config, "scheduler", "default")
        cls = base.__class__ if name == "default" else getattr(diffusers, SCHEDULERS[name])
        return cls.from_config(base.config)

    def step_report(self, report):
        """Adapt the loop's progress(step, steps, tile, tiles) to the pipeline's tile reporter."""
        return lambda step, steps, tile, tiles: report(tile, tiles, step, steps)
