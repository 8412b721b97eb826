"""Run and ensemble directories: the one layout and its tables."""
