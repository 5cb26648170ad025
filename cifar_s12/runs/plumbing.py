"""Framework plumbing: Ctrl-C that waits for a set of files, Ctrl-C under Lightning, and Lightning's notices hidden."""
from __future__ import annotations

import logging
import signal
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytorch_lightning as pl


@contextmanager
def interrupts_deferred():
    """Ctrl-C inside the block takes effect when the block ends (as a KeyboardInterrupt).

    For files that must agree with each other, like an epoch's ``model.pt`` and ``metrics.json``: each write is
    atomic, and this keeps an interrupt from falling between them. Outside the main thread (where Python delivers
    signals) it does nothing.
    """
    received: list[int] = []
    try:
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


@contextmanager
def ctrl_c_raises(trainer: pl.Trainer):
    """Ctrl-C during ``trainer.fit``/``test`` in the block raises KeyboardInterrupt, as it does in the plain loop.

    Lightning stops gracefully on Ctrl-C, then calls ``sys.exit(1)`` and leaves SIGINT ignored for the rest of the
    process: the CLI would exit 1 (not 130) and a notebook kernel could no longer be interrupted. Undo both.
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit:
        if not trainer.interrupted:
            raise
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt from None


# Lightning's LR range test, and the choice between it and torch-lr-finder
# Lightning's notices that tell a student nothing to act on: what the run's own first line already says (device,
# precision), an advertisement, and notes on what the package chose on purpose. Warnings stay.
RUN_NOTICES = ("Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision", "GPU available:",
               "TPU available:", "HPU available:", "LOCAL_RANK:", "\N{ELECTRIC LIGHT BULB} Tip:",
               "Loading `train_dataloader` to estimate number of stepping batches",
               "Trainer already configured with model summary callbacks",
               # restoring a checkpoint (a resumed run, the Tuner's own): the machine's path of the file; the run
               # says "resuming after epoch N" itself
               "Restoring states from the checkpoint path", "Restored all states", "`weights_only` was not set")


# The Tuner's stop after its steps, and its note when a short test gives it too few points for a suggestion
# (lightning_lr_find then takes the steepest descent itself).
TUNER_NOTICES = ("`Trainer.fit` stopped: `max_steps=", "Failed to compute suggestion for learning rate")


@contextmanager
def lightning_notices_hidden(*prefixes: str):
    """Within the block, Lightning's log records that start with one of ``prefixes`` are dropped."""
    import logging

    class Hide(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(prefixes)

    names = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.tuner.lr_finder",
             "pytorch_lightning.trainer.connectors.checkpoint_connector")
    loggers, hide = [logging.getLogger(name) for name in names], Hide()
    for logger in loggers:
        logger.addFilter(hide)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hide)


def hide_lightning_warnings() -> None:
    """Lightning's warnings that a user cannot act on."""
    # An internal deprecation of its pytree code under newer torch; ModelSummary sizing bf16 parameters as fp32
    # (they are fp32: autocast keeps fp32 weights).
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
    # A run shorter than log_every_n_steps (a quick run) logs no per-step values: plots.plot_csv_log says so itself.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
    # A resumed run writes its checkpoints beside the first part's, in the folder ModelCheckpoint finds "not empty".
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
