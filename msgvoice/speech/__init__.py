"""The speech wing: text → audio on the daemon side (front door: `speaker.py`)."""
