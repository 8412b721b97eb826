"""Scoring new images: bundles, the predictor, Grad-CAM."""
