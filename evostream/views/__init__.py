"""What the CLI and the HTTP API show, read once for both: the processors' topics, the governance projection, token
texts. Above the services (it reads their topics and projections), below the CLI and the API (which only present it)."""
