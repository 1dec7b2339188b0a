"""Models: segmenter, trajectory encoder, TrajViT2, ViT3D baseline, TrajAdapter, text tower."""
