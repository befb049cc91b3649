"""Test-wide settings, applied before any test module imports Ray or W&B."""

import os

# Every cluster a test starts is local: keep its ports on 127.0.0.1 (Ray reads this at import time).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# W&B never reaches for the network from a test.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
