"""The Discord adapter (discord.py 2.x, the `discord` extra): DMs, server channels, threads and
slash commands. `spec` imports no SDK; `adapter` holds the `discord.Client`."""
