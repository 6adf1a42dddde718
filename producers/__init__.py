"""The inference producer: model loading, instrumented generation, step emission, the request client."""
