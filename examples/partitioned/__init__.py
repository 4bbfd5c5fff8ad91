"""A partitioned order pipeline with transactions and a broker crash: ``python -m examples.partitioned --help``."""
