"""Stopping cleanly on a signal, so that the run can be resumed.

SIGUSR2 (SLURM's warning before a time limit or preemption: `--signal=USR2@N`, or
`scancel --signal=USR2`) and SIGTERM (scancel, preemption, torchrun shutting its workers down)
do not kill training. The handler only records the signal; at the next optimizer-step boundary
every process stops (they agree on it), the Trainer saves a resumable checkpoint, the run's
status becomes `interrupted`, and the process exits with 128 + the signal number.

Under submitit (SLURM jobs through hydra/launcher=slurm), the handler that submitit had
installed for the signal is called after the save: for SIGUSR2 it calls the Hydra launcher's
`checkpoint()` (which resubmits the same job with the same overrides, hence the same job
directory), requeues the job and exits. The requeued job resumes from that directory.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from transformers import TrainerCallback

from vlm_resampler.training import distributed

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopSignals:
    """Within the `with` block, STOP_SIGNALS are recorded instead of acted upon."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "not in the main thread: %s will not stop training cleanly", ", ".join(s.name for s in STOP_SIGNALS)
            )
            return self
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default it is.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _record(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            print(
                f"received {signal.Signals(signum).name}: training stops at the next step boundary and saves "
                "a resumable checkpoint",
                file=sys.stderr,
                flush=True,
            )

    def agreed(self) -> int:
        """The signal any process received (0: none); every process must ask at the same step."""
        return distributed.max_over_processes(self.received or 0)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving what is needed to resume."""

    def __init__(self, signum: int, message: str, previous_handler=None) -> None:
        super().__init__(message)
        self.signum = signum
        self.previous_handler = previous_handler

    def exit(self):
        """Hand over to the handler that was installed before ours (submitit: checkpoint and
        requeue, then it exits), else exit with 128 + the signal number."""
        if distributed.is_main_process():
            print(f"{signal.Signals(self.signum).name}: {self}", file=sys.stderr, flush=True)
        if callable(self.previous_handler):
            self.previous_handler(self.signum, None)
        raise SystemExit(128 + self.signum)


class StopOnSignal(TrainerCallback):
    """Ends training at the step boundary after a stop signal, with a resumable checkpoint.

    Without a signal, the Trainer's usual save at the last step is skipped: the stage's own
    checkpoint follows at once, and the resumable one would only be deleted."""

    def __init__(self, signals: StopSignals) -> None:
        self.signals = signals
        self.signum = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.signum = self.signals.agreed()
        if self.signum:
            control.should_save = True
            control.should_training_stop = True
        elif state.global_step >= state.max_steps:
            control.should_save = False
        return control
