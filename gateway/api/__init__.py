"""HTTP routers, one per resource; thin: they validate, check permissions and call services."""
