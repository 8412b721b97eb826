"""CLI commands, one module per pipeline stage; each has ``register(app)``."""
