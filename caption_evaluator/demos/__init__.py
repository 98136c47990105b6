"""End-to-end demos behind `caption-eval demo`: wrong labels of a digits classifier, wrong captions of a text-to-image denoiser."""
