"""aware: alignment-aware fine-tuning (AWARE, arXiv 2602.02258) from the command line."""

__version__ = "0.1.0"
