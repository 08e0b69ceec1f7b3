"""Chat channels: http, console (and, later, imessage and telegram)."""
