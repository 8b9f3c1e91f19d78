"""Skills and the command router. Skills see only neutral types and a TurnContext."""
