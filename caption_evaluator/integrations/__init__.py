"""Trainer integrations, each behind its extra: diffusion losses (ai-toolkit, diffusers), Lightning, Hugging Face and accelerate."""
