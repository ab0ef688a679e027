"""What a running job shows: a tqdm bar on a terminal, periodic log lines otherwise, or nothing."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("engine.synth.job")


@dataclass
class Counts:
    accepted: int = 0
    rejected: int = 0
    quarantined: int = 0
    in_flight: int = 0  # requests handed to generators and not yet judged
    total: int | None = None  # inputs, once the whole input has been read

    @property
    def done(self) -> int:
        return self.accepted + self.rejected + self.quarantined


class Progress:
    """`mode`: "bar" | "log" | "off" | "auto" (bar when stderr is a terminal, else log)."""

    def __init__(self, mode: str = "auto", *, already_done: int = 0, log_every_s: float = 10.0) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.already_done = already_done  # finished by earlier runs: not part of this run's rate
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self.last_log = self.started
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=None, initial=already_done, unit="sample", dynamic_ncols=True, file=sys.stderr)

    def rate(self, counts: Counts) -> float:
        elapsed = time.monotonic() - self.started
        return (counts.done - self.already_done) / elapsed if elapsed > 0 else 0.0

    def update(self, counts: Counts) -> None:
        if self.bar is not None:
            if counts.total is not None and self.bar.total != counts.total:
                self.bar.total = counts.total
            self.bar.update(counts.done - self.bar.n)  # through update(), so tqdm's rate and ETA hold
            self.bar.set_postfix(accepted=counts.accepted, rejected=counts.rejected,
                                 quarantined=counts.quarantined, in_flight=counts.in_flight, refresh=True)
        elif self.mode == "log" and time.monotonic() - self.last_log >= self.log_every_s:
            self.last_log = time.monotonic()
            log.info("%s", self.line(counts))

    def line(self, counts: Counts) -> str:
        rate = self.rate(counts)
        total = "?" if counts.total is None else str(counts.total)
        eta = ""
        if counts.total is not None and rate > 0:
            eta = f", ETA {max(counts.total - counts.done, 0) / rate:.0f}s"
        return (f"{counts.done}/{total} done (accepted {counts.accepted}, rejected {counts.rejected}, "
                f"quarantined {counts.quarantined}), {counts.in_flight} in flight, {rate:.2f} samples/s{eta}")

    def close(self, counts: Counts) -> None:
        if self.bar is not None:
            self.update(counts)
            self.bar.close()
        elif self.mode == "log":
            log.info("finished: %s", self.line(counts))
