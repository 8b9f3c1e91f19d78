"""The support channel: an HTTP API (visitors, messages, Server-Sent Events, history,
erasure) on Parley's HTTP host, for a website's chat widget and a company's own back end.
See docs/support.md. `spec` and `settings` import no web framework."""
