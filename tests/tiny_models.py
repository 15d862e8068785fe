"""Tiny random-weight diffusion components saved in the diffusers folder layout.

``build_tiny_sd(dir)``, ``build_tiny_latent_upscaler(dir)`` and ``build_tiny_x4_upscaler(dir)`` write ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` under ``dir`` so
that ``Cls.from_pretrained(dir, subfolder=...)`` loads them offline, like a hub
repository. Weights are seeded, so a folder built twice holds the same model.
Configs come from /work/shared/FACTS.md.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

__all__ = ["autoencoder", "build_tiny_latent_upscaler", "build_tiny_sd", "build_tiny_x4_upscaler",
           "latent_upscaler_unet", "load_components"]

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


def _save_text_encoder(folder: Path, vocab_size: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         max_position_embeddings=MAX_TOKENS, vocab_size=vocab_size, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, hidden_act="quick_gelu", projection_dim=32)
    CLIPTextModel(cfg).eval().save_pretrained(folder)


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


def load_components(root: str | Path, scheduler_cls=None) -> dict:
    """Load ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (and ``low_res_scheduler`` if
    present) from ``root`` (offline, eval mode)."""
    from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

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
         if (root / "low_res_scheduler").is_dir() else {})
