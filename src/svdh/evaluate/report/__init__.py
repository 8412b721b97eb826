"""Plots and the self-contained HTML report of evaluated runs."""
