"""The caption probe: scoring captions with a text-to-image denoiser, caption edits and their calibration, captioned data and a small denoiser."""
