"""Foundations every layer uses: one-line CLI errors, atomic and checksummed files, versions, process groups."""
