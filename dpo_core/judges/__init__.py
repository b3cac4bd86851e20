"""Judges score candidate answers; every judge returns a score in [0, 1] per candidate."""
