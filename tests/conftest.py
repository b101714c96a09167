"""Tests in three tiers: unit/ (no Ray, plain objects, under a minute),
system/ (real loopback clusters), deploy/ (the shipped configs, scripts and
docs). support/ holds their helpers."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
