"""The parts every adapter shares: the HTTP host, the run loop that fails loudly, the
throttled streamer, the splitter and the outbound rate gate (see docs/adapters.md)."""
