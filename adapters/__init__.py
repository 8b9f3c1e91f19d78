"""Platform adapters: translate platform events to `Incoming` and replies to platform calls."""
