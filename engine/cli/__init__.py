"""The `fea` command: its parser (main.py) and the checks each command makes before it starts (preflight.py)."""
