"""``python -m gateway.cli``: the same command line as the ``gateway`` console script."""

from gateway.cli import app

app()
