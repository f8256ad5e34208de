"""trainer/preemption.py: a first Ctrl-C asks for a checkpoint, a second stops at once."""

import os
import signal
import time

import pytest

from trainer import preemption


def test_a_first_ctrl_c_asks_for_a_checkpoint_and_a_second_stops_at_once():
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
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
