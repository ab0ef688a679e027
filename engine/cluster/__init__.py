"""Ray: connecting to a cluster or starting a private local one (connect.py), and the watchdog that takes
a private one down with its driver (watchdog.py)."""
