"""ombrl: offline model-based reinforcement learning, reproducible end to end."""

__version__ = "0.1.0"
