"""Chatwoot: Parley as a Chatwoot agent bot (webhooks in, the application API out), and the
desk bridge that maps Chatwoot's conversation statuses onto Parley's handoff state."""
