"""Order notifications on a priority queue: ``python -m examples.notifications --help``."""
