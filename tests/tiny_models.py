"""Tiny random-weight diffusion components saved in the diffusers folder layout.

``build_tiny_sd(dir)``, ``build_tiny_sdxl(dir)``, ``build_tiny_latent_upscaler(dir)`` and ``build_tiny_x4_upscaler(dir)`` write ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` under ``dir`` so
that ``Cls.from_pretrained(dir, subfolder=...)`` loads them offline, like a hub
repository (SDXL adds ``text_encoder_2/``, ``tokenizer_2/`` and a ``model_index.json``);
``build_tiny_controlnet(dir, model_dir)`` writes a ControlNetModel for one of them. Weights are
seeded, so a folder built twice holds the same model.
Configs come from /work/shared/FACTS.md.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

__all__ = ["autoencoder", "build_tiny_controlnet", "build_tiny_latent_upscaler", "build_tiny_sd", "build_tiny_sdxl",
           "build_tiny_x4_upscaler", "as_8bit", "latent_upscaler_unet", "load_components", "mode_latents",
           "sdxl_unet"]

MAX_TOKENS = 16  # CLIP max_position_embeddings of the tiny text encoder


def _write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over lower-case letters and digits, with a few merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    # Each merge's result keeps the "</w>" suffix inside it (a bare "</w>" fails in transformers 5).
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "f</w>"), ("i", "n"), ("e", "r</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)
    tok.save_pretrained(folder)


def _save_text_encoder(folder: Path, vocab_size: int, projection: bool = False, seed: int = 0) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         max_position_embeddings=MAX_TOKENS, vocab_size=vocab_size, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, hidden_act="quick_gelu", projection_dim=32)
    (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval().save_pretrained(folder)


def autoencoder(block_out_channels=(32, 32, 32, 32), layers_per_block: int = 1, attention: bool = True, **kwargs):
    """A seeded random-weight SD-style AutoencoderKL (4 latent channels, 2 ** (blocks - 1) scale), eval mode.

    The defaults are the tiny VAE; ``(128, 256, 512, 512)`` with 2 layers per block is the SD VAE's size.
    """
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    torch.manual_seed(0)
    return AutoencoderKL(latent_channels=4, block_out_channels=list(block_out_channels),
                         down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                         layers_per_block=layers_per_block, norm_num_groups=32, mid_block_add_attention=attention,
                         **kwargs).eval()


def latent_upscaler_unet(block_out_channels=(32, 32, 64, 64), layers_per_block: int = 1,
                         attention_head_dim: int = 8, cross_attention_dim: int = 32):
    """A seeded random-weight UNet with the sd-x2-latent-upscaler layout (8-in/5-out K-UNet, size multiple 8).

    The defaults are the tiny one; ``(384, 384, 768, 768)``, 4 layers, heads of 64 and cross-attention
    768 are the published model's size (372.6M parameters).
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        in_channels=8, out_channels=5, down_block_types=("KDownBlock2D",) + ("KCrossAttnDownBlock2D",) * 3,
        up_block_types=("KCrossAttnUpBlock2D",) * 3 + ("KUpBlock2D",), mid_block_type=None,
        block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn="gelu",
        norm_num_groups=None, attention_head_dim=attention_head_dim, cross_attention_dim=cross_attention_dim,
        time_embedding_type="fourier", timestep_post_act="gelu", time_cond_proj_dim=128 + cross_attention_dim,
        resnet_time_scale_shift="scale_shift", conv_in_kernel=1, conv_out_kernel=1).eval()


def _save_common(root: Path) -> None:
    from transformers import CLIPTokenizer

    _write_tokenizer(root / "tokenizer")
    vocab_size = len(CLIPTokenizer.from_pretrained(root / "tokenizer"))
    _save_text_encoder(root / "text_encoder", vocab_size)
    autoencoder().save_pretrained(root / "vae")


def build_tiny_sd(root: str | Path) -> Path:
    """SD-1.x-like components (UNet downsampling once: size multiple 2, DDIM); returns ``root``."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    root = Path(root)
    _save_common(root)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    unet.save_pretrained(root / "unet")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    return root


def sdxl_unet(block_out_channels=(32, 64), layers_per_block: int = 2, transformer_layers_per_block=(1, 2),
              attention_head_dim=(2, 4), cross_attention_dim: int = 64, addition_time_embed_dim: int = 8,
              pooled_dim: int = 32, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")):
    """A seeded random-weight SDXL-layout UNet (text_time added conditioning, 6 time ids), eval mode.

    The defaults are tiny (diffusers' own SDXL test UNet: size multiple 2, cross-attention 32 + 32).
    SDXL base 1.0's published config is ``(320, 640, 1280)``, 2 layers, transformer layers
    ``(1, 2, 10)``, heads ``(5, 10, 20)``, cross-attention 2048, time embed 256, pooled 1280, with
    down blocks ``("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")``.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=block_out_channels,
        layers_per_block=layers_per_block, down_block_types=down_block_types, up_block_types=up_block_types,
        attention_head_dim=attention_head_dim, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim, transformer_layers_per_block=transformer_layers_per_block,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + pooled_dim,
        cross_attention_dim=cross_attention_dim).eval()


def build_tiny_sdxl(root: str | Path, force_zeros_for_empty_prompt: bool = True) -> Path:
    """SDXL-base-like components: two text encoders (the second with a projection), a ``text_time``
    UNet (multiple 2), a VAE asking for ``force_upcast`` with SDXL's scaling 0.13025, Euler
    "leading" like SDXL, and a ``model_index.json``; returns ``root``."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    root = Path(root)
    _write_tokenizer(root / "tokenizer")
    _write_tokenizer(root / "tokenizer_2")
    vocab_size = len(CLIPTokenizer.from_pretrained(root / "tokenizer"))
    _save_text_encoder(root / "text_encoder", vocab_size)
    _save_text_encoder(root / "text_encoder_2", vocab_size, projection=True, seed=1)
    autoencoder(scaling_factor=0.13025, force_upcast=True).save_pretrained(root / "vae")
    sdxl_unet().save_pretrained(root / "unet")
    EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                           timestep_spacing="leading").save_pretrained(root / "scheduler")
    index = {"_class_name": "StableDiffusionXLImg2ImgPipeline", "force_zeros_for_empty_prompt":
             force_zeros_for_empty_prompt, "requires_aesthetics_score": False}
    (root / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return root


def build_tiny_controlnet(root: str | Path, model: str | Path) -> Path:
    """A ControlNetModel for the tiny model at ``model`` (its UNet's layout, an 8x conditioning
    embedding for the tiny VAE), saved at ``root``. Its zero convolutions get small seeded random
    weights, so that it does change the result (a freshly made ControlNet adds exactly nothing)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    root = Path(root)
    unet = UNet2DConditionModel.from_pretrained(Path(model), subfolder="unet")
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
    zero = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero:
            conv.weight.normal_(0, 0.1)
            conv.bias.normal_(0, 0.1)
    net.eval().save_pretrained(root)
    return root


def build_tiny_latent_upscaler(root: str | Path) -> Path:
    """sd-x2-latent-upscaler-like components (8-in/5-out K-UNet, multiple 8, Euler "sample"); returns ``root``."""
    from diffusers import EulerDiscreteScheduler

    root = Path(root)
    _save_common(root)
    latent_upscaler_unet().save_pretrained(root / "unet")
    EulerDiscreteScheduler(prediction_type="sample").save_pretrained(root / "scheduler")
    return root


def build_tiny_x4_upscaler(root: str | Path) -> Path:
    """stable-diffusion-x4-upscaler-like components (7-in UNet with noise-level class embedding, multiple 4,
    DDIM v-prediction; a 3-block VAE, 4x, scaling 0.08333; a DDPM ``low_res_scheduler/``); returns ``root``."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    root = Path(root)
    _save_common(root)
    autoencoder((32, 32, 64), scaling_factor=0.08333).save_pretrained(root / "vae")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, use_linear_projection=True, num_class_embeds=100)
    unet.save_pretrained(root / "unet")
    DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02,
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02).save_pretrained(
        root / "low_res_scheduler")
    return root


def mode_latents(vae, image):
    """(H, W, 3) float image in [0, 1] -> its VAE latents (1, 4, H/8, W/8): the mode of the latent
    distribution times the scaling factor, what tiledsr's one-tile encode gives a pipeline."""
    px = torch.from_numpy(image.transpose(2, 0, 1))[None] * 2 - 1
    with torch.no_grad():
        return vae.encode(px).latent_dist.mode() * vae.config.scaling_factor


def as_8bit(ref):
    """A float image in [0, 1] as the 8-bit levels a PNG of it holds (0..255, float)."""
    import numpy as np

    return np.rint(np.clip(ref, 0, 1) * 255)


def load_components(root: str | Path, scheduler_cls=None) -> dict:
    """Load ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (and ``low_res_scheduler``,
    ``text_encoder_2``/``tokenizer_2`` if present) from ``root`` (offline, eval mode)."""
    from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(root)
    config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    if scheduler_cls is None:
        import diffusers

        scheduler_cls = getattr(diffusers, config["_class_name"])
    assert issubclass(scheduler_cls, SchedulerMixin)
    return {
        "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet").eval(),
        "vae": AutoencoderKL.from_pretrained(root, subfolder="vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(root, subfolder="text_encoder").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
        "scheduler": scheduler_cls.from_pretrained(root, subfolder="scheduler"),
    } | ({"low_res_scheduler": DDPMScheduler.from_pretrained(root, subfolder="low_res_scheduler")}
         if (root / "low_res_scheduler").is_dir() else {}) | (
        {"text_encoder_2": CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2").eval(),
         "tokenizer_2": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2")}
        if (root / "text_encoder_2").is_dir() else {})
