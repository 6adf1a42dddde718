"""The composition root shared by the CLI and the HTTP API: the code that wires services together (governed serving,
one evolution cycle). Above the views, below the API and the CLI, which only present what it returns."""
