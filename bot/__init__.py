"""Parley: a chat and assistant bot framework with a pluggable language-model backend."""

__version__ = "0.1.0"
