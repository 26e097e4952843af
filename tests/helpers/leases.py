"""A table lease with slow reads, for the lease tests on a filesystem and on S3."""

from __future__ import annotations

import time

from connectors.lance.lease import TableLease


class SlowReads(TableLease):
    """A lease whose storage answers reads late (a slow GET, a process paused between reading the lease
    and acting on it), from the moment ``slow`` is set: the storage itself stays real."""

    def __init__(self, *args, read_delay_s: float = 0.6, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_delay_s, self.slow = read_delay_s, False

    def read(self):
        lease = super().read()
        if self.slow:
            time.sleep(self.read_delay_s)
        return lease
