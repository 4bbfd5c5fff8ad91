"""Development tools run from a checkout (bench, crashtest, fuzz, ...); not installed."""
