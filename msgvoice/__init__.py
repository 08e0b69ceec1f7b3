"""msgvoice: a local voice-reply daemon for chat bots."""

__version__ = "0.1.0"
