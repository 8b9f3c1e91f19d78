"""Language-model backends. `bot/` sees only the protocol in `backends.base`."""
