"""Request and response bodies of the HTTP API: the components of the OpenAPI document.

One module per resource family (accounts, patients, letters, access). They sit below both ``api/`` (the
routers declare them) and ``services/`` (the use cases build them), so no service imports a router module.
A class name here is an OpenAPI component name, which the generated TypeScript client relies on: renaming one
changes the API.
"""
