"""Wet rehearsals (issue 12): stand-in checkpoints in the official formats and a local server."""
