"""Segmentation pseudo-labels (trajectory label maps) for video clips."""
