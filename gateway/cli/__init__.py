"""The ``gateway`` command line: serve, configuration, migrations, accounts, templates, checks, secrets.

This module only assembles the command groups, each in a module of its own (:mod:`.config`, :mod:`.db`,
:mod:`.users`, :mod:`.templates`, :mod:`.links`, :mod:`.serve`,
:mod:`.shared_secrets`); they share
:func:`gateway.cli.config.settings_or_exit`, so every command reads the same settings as the server and stops
with a readable message on bad configuration.
Run it as ``gateway …`` (the console script) or ``python -m gateway.cli …``.
"""

from __future__ import annotations

import typer

from gateway.cli.config import config_app
from gateway.cli.db import db_app
from gateway.cli.links import check_app
from gateway.cli.serve import serve
from gateway.cli.shared_secrets import secrets_app
from gateway.cli.templates import templates_app
from gateway.cli.users import users_app

app = typer.Typer(help="FHIR/openEHR gateway administration.", no_args_is_help=True, add_completion=False)
app.command("serve")(serve)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(templates_app, name="templates")
app.add_typer(check_app, name="check")
app.add_typer(secrets_app, name="secrets")
