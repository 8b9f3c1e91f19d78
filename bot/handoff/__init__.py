"""Human handoff: a conversation state in SQL (bot -> waiting -> human -> bot), its triggers,
the agent's handoff note, and the desk bridges (Chatwoot, the agent API's webhooks) that an
agent works through. types.py is the seam the bridges build on."""
