"""The turn pipeline: inbox, per-conversation lock, burst policy, context, dispatch."""
