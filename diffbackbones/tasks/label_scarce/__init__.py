"""Label-scarce segmentation: DDPM-seg's pixel-classifier protocol on a backbone's features."""
