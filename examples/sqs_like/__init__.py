"""An SQS-like job service on Lockgate: ``python -m examples.sqs_like --help``."""
