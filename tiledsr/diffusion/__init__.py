"""Diffusion building blocks: tiled denoising over a latent canvas, tiled VAE, model loading.

Importing this package needs the ``diffusion`` extra (diffusers, transformers).
"""
