"""Data contracts, video decoding, manifests, synthetic data and the training loader."""
