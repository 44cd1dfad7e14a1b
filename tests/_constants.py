"""Constants every test shares (one definition; conftest and the fixtures import them)."""

from __future__ import annotations

#: The passphrase of every test workspace. Long and distinctive, so a test can grep for leaks.
PASSPHRASE = "correct-horse-battery-staple-Q7x9!"
#: scrypt cost for test keys: 2**12 x 8 x 128 B = 4 MiB, a few milliseconds per unlock.
LOW_SCRYPT = {"n": 2**12, "r": 8, "p": 1}
#: Wall-clock limit (seconds) that only a real hang reaches: a loaded machine is slow, not stuck. Bound work by CPU time.
HANG_S = 3600.0
