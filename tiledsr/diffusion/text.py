"""Prompt encoding, once per run, exactly as the diffusers pipelines encode prompts.

* :func:`encode_sd_prompt` matches ``StableDiffusionPipeline`` /
  ``StableDiffusionImg2ImgPipeline.encode_prompt`` (last hidden state after the
  final layer norm; an unconditional "" or negative prompt when guidance > 1).
* :func:`encode_upscaler_prompt` matches ``StableDiffusionLatentUpscalePipeline``
  (the last entry of ``hidden_states``, i.e. before the final layer norm, plus
  the pooled output; the prompt becomes "" when guidance == 0).
* :func:`encode_sdxl_prompt` matches ``StableDiffusionXLImg2ImgPipeline.encode_prompt`` (the
  penultimate hidden states of both text encoders side by side, the second one's projected pooled
  output; a zero unconditional part for an empty negative prompt when the model asks for it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = ["PromptEmbeds", "encode_sd_prompt", "encode_sdxl_prompt", "encode_upscaler_prompt"]


@dataclass(frozen=True)
class PromptEmbeds:
    """Text conditioning for one run.

    ``cond``/``uncond``: (1, L, D) float hidden states; ``uncond`` is None when
    the run has no classifier-free guidance. ``pooled``/``uncond_pooled``:
    (1, D) pooled outputs, used by the latent upscaler and SDXL (else None).
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None

    @property
    def guided(self) -> bool:
        """True when an unconditional embedding is present (classifier-free guidance)."""
        return self.uncond is not None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PromptEmbeds":
        """The same embeddings on ``device`` (and in ``dtype`` if given)."""
        move = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
        return replace(self, cond=move(self.cond), uncond=move(self.uncond), pooled=move(self.pooled),
                       uncond_pooled=move(self.uncond_pooled))

    def hidden_batch(self, n: int, guided: bool) -> torch.Tensor:
        """Hidden states for ``n`` tiles: (2n, L, D) as [uncond]*n + [cond]*n when ``guided``, else (n, L, D)."""
        if guided:
            return torch.cat([self.uncond.expand(n, -1, -1), self.cond.expand(n, -1, -1)])
        return self.cond.expand(n, -1, -1)

    def pooled_batch(self, n: int, guided: bool) -> torch.Tensor:
        """Pooled outputs for ``n`` tiles, laid out like :meth:`hidden_batch`: (2n, D) or (n, D)."""
        if guided:
            return torch.cat([self.uncond_pooled.expand(n, -1), self.pooled.expand(n, -1)])
        return self.pooled.expand(n, -1)


def _token_ids(tokenizer, text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = tokenizer([text], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def _sd_hidden(tokenizer, text_encoder, text: str, max_length: int) -> torch.Tensor:
    ids, mask = _token_ids(tokenizer, text, max_length)
    device = text_encoder.device
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    out = text_encoder(ids.to(device), attention_mask=mask.to(device) if use_mask else None)
    return out[0].to(dtype=text_encoder.dtype)


@torch.no_grad()
def encode_sd_prompt(tokenizer, text_encoder, prompt: str, negative_prompt: str | None = None, *,
                     guidance: float) -> PromptEmbeds:
    """Stable Diffusion 1.x/2.x prompt embeddings on the text encoder's device and dtype.

    Returns ``cond`` (1, L, D) and, when ``guidance > 1``, ``uncond`` from
    ``negative_prompt`` (default ""). ``L`` is ``tokenizer.model_max_length``.
    """
    cond = _sd_hidden(tokenizer, text_encoder, prompt, tokenizer.model_max_length)
    if guidance <= 1:
        return PromptEmbeds(cond)
    uncond = _sd_hidden(tokenizer, text_encoder, negative_prompt or "", cond.shape[1])
    return PromptEmbeds(cond, uncond)


def _upscaler_states(tokenizer, text_encoder, text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, _ = _token_ids(tokenizer, text, max_length)
    out = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    return out.hidden_states[-1], out.pooler_output


@torch.no_grad()
def encode_upscaler_prompt(tokenizer, text_encoder, prompt: str, negative_prompt: str | None = None, *,
                           guidance: float) -> PromptEmbeds:
    """x2 latent upscaler prompt embeddings: ``cond`` (1, L, D), ``pooled`` (1, D) and, when
    ``guidance > 1``, ``uncond``/``uncond_pooled`` from ``negative_prompt`` (default "").

    As in the diffusers pipeline, ``guidance == 0`` replaces the prompt with "".
    """
    text = "" if guidance == 0 else prompt
    cond, pooled = _upscaler_states(tokenizer, text_encoder, text, tokenizer.model_max_length)
    if guidance <= 1:
        return PromptEmbeds(cond, pooled=pooled)
    uncond, uncond_pooled = _upscaler_states(tokenizer, text_encoder, negative_prompt or "", cond.shape[1])
    return PromptEmbeds(cond, uncond, pooled, uncond_pooled)


def _sdxl_states(pairs, text: str, max_length: int | None):
    """Penultimate hidden states of every (tokenizer, encoder) side by side (1, L, D1 + D2), and the
    pooled projection of the last encoder that has one (1, P)."""
    states, pooled = [], None
    for tokenizer, encoder in pairs:
        ids, _ = _token_ids(tokenizer, text, max_length or tokenizer.model_max_length)
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


@torch.no_grad()
def encode_sdxl_prompt(tokenizers, text_encoders, prompt: str, negative_prompt: str | None = None, *,
                       guidance: float, zero_negative: bool = True) -> PromptEmbeds:
    """SDXL prompt embeddings: ``cond`` (1, L, D1 + D2) in the last encoder's dtype, ``pooled`` (1, P)
    and, when ``guidance > 1``, ``uncond``/``uncond_pooled``: zeros when ``negative_prompt`` is empty
    and ``zero_negative`` (the model's ``force_zeros_for_empty_prompt``), else its embeddings.

    ``tokenizers``/``text_encoders``: SDXL's two, in order (a refiner has only the second; None
    entries are skipped). The same prompt goes to both encoders, as in the pipeline by default.
    """
    pairs = [(t, e) for t, e in zip(tokenizers, text_encoders) if t is not None and e is not None]
    dtype = pairs[-1][1].dtype
    cond, pooled = _sdxl_states(pairs, prompt, None)
    cond = cond.to(dtype)
    if guidance <= 1:
        return PromptEmbeds(cond, pooled=pooled)
    if not negative_prompt and zero_negative:
        return PromptEmbeds(cond, torch.zeros_like(cond), pooled, torch.zeros_like(pooled))
    uncond, uncond_pooled = _sdxl_states(pairs, negative_prompt or "", cond.shape[1])
    return PromptEmbeds(cond, uncond.to(dtype), pooled, uncond_pooled)
