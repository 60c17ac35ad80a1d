"""Feedback sources: who turns (prompt, candidate responses) into preference records."""
