"""Evaluation: retrieval, classification, segmentation quality, probing."""
