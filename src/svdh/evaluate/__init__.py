"""Metrics, conformal intervals, ensembles and the report."""
