"""effrecipes: train efficient image classifiers under a hard FLOP budget with Composer recipes."""
__version__ = "0.1.0"
