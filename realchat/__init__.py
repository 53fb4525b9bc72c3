"""RealChat: realistic multi-turn chat data from a user simulator trained on real human turns."""

__version__ = "0.1.0"
