"""Order events fanned out to consumer groups on Lockgate topics: ``python -m examples.pubsub --help``."""
