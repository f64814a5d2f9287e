"""Stop requests: the first signal is recorded, a stop signal arms the grace timer,
a second one abandons at once; SIGUSR1 (pre-emption) has no deadline."""
from __future__ import annotations

import signal

import pytest

import fedmpi.signals as signals
from fedmpi.signals import StopRequest, Stopped


@pytest.fixture
def abandoned(monkeypatch):
    calls = []
    monkeypatch.setattr(signals, "abandon", lambda signum: calls.append(signum))
    return calls


def test_usr1_requests_a_stop_without_a_deadline(abandoned):
    req = StopRequest(grace_s=0.01)
    req.handle(signal.SIGUSR1)
    assert req.requested and req.name == "SIGUSR1" and req._timer is None


def test_term_arms_the_grace_timer_and_a_second_abandons_now(abandoned):
    req = StopRequest(grace_s=30)
    req.handle(signal.SIGTERM)
    assert req.name == "SIGTERM" and req._timer is not None and abandoned == []
    req.handle(signal.SIGINT)
    assert abandoned == [signal.SIGINT]
    req.cancel()


def test_the_grace_timer_abandons(abandoned):
    req = StopRequest(grace_s=0.05)
    req.handle(signal.SIGHUP)
    req._timer.join(2)
    assert abandoned == [signal.SIGHUP]


def test_a_term_after_usr1_is_what_the_stop_reports(abandoned):
    req = StopRequest(grace_s=30)
    req.handle(signal.SIGUSR1)
    req.handle(signal.SIGTERM)
    assert req.name == "SIGTERM" and abandoned == []
    req.cancel()


def test_the_stop_message_says_where_the_checkpoint_is():
    assert str(Stopped("SIGTERM", 4, 3, "runs/x")) == (
        "stopped by SIGTERM before round 4: the checkpoint of round 3 in runs/x is complete; continue with --resume")
    assert "nothing to resume" in str(Stopped("SIGUSR1", 0, None))
