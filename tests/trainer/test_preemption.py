"""trainer/preemption.py: a first Ctrl-C asks for a checkpoint, a second stops at once."""

import os
import signal
import time

import pytest

from trainer import preemption


def test_a_first_ctrl_c_asks_for_a_checkpoint_and_a_second_stops_at_once():
  # Python's own Ctrl-C handler, whatever an earlier test in this process left installed.
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  watch = preemption.PreemptionWatch()
  try:
    assert not watch.should_stop(1)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert watch.should_stop(2) and watch.reason == "interrupted (Ctrl-C)"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
  finally:
    watch.close()
    restored = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, before)
  assert restored is signal.default_int_handler
