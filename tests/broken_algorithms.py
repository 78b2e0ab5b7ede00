"""Algorithms whose evaluation cannot succeed (test_evaluation)."""


class Unrestorable:
    """An algorithm whose checkpoint cannot be loaded: its evaluation fails."""

    def __init__(self, config):
        self.config = config

    def restore(self, checkpoint):
        raise RuntimeError(f"cannot read {checkpoint}")

    def stop(self):
        pass


class Endless(Unrestorable):
    """An algorithm that never finishes restoring: its evaluation times out."""

    def restore(self, checkpoint):
        import time

        time.sleep(3600)
