"""A DAG of tasks over fifo, lifo, priority and round-robin queues: ``python -m examples.taskflow --help``."""
