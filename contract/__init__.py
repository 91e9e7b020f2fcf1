"""What every stage must agree on: the command format and the bundle manifest.

Dependency-free on purpose, so that training (torch) and serving (no torch) share it.
"""
