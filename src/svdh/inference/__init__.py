"""Scoring new images.

``bundle`` (the model file format), ``predictor`` (:class:`~svdh.inference.predictor.Predictor`:
images in, :class:`~svdh.inference.prediction.Prediction` out), ``prediction`` (the one output
type and its renderings), ``inputs`` (files, folders, the patients CSV), ``writers`` (CSV/JSON
results, :func:`~svdh.inference.writers.predict_files`), ``gradcam`` (heat maps and overlays) and
``localisation`` (where the maps fall on a phantom's damaged joints, ``svdh explain``).
"""
