"""The top of the house: the self-improvement rounds (rounds.py), where their steps run (placement.py,
overlap.py), their report and console, and `fea watch`, which retrains when new samples land (watch.py)."""
