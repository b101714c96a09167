"""Faults a test can put into a PC, as a lying or broken volunteer PC would
have them: `worker join --corrupt-results` / `--corrupt-deltas KIND` set these
on the PC's Ray node, and its tasks read them. Nothing sets them otherwise."""

CORRUPT_RESULTS_ENV = "SALVAGE_TEST_CORRUPT_RESULTS"  # science results are forged
CORRUPT_DELTAS_ENV = "SALVAGE_TEST_CORRUPT_DELTAS"  # pool deltas are broken this way
DELTA_FAULTS = ("short", "nan", "codec", "inf-scale", "tokens")
