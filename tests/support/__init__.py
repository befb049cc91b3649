"""What the test tiers share: helpers, fakes and builders, imported as `tests.support.<module>` (Ray's workers and
the reward scorer's processes import some of them by that name). Fixtures live in tests/conftest.py."""
