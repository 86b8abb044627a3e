"""pynetdicom's polling sleeps are short only while instances are flowing, and restorable."""

from __future__ import annotations

import time

import pynetdicom.association
import pynetdicom.dul

from ftlct.agent.dicom.prompt_polling import PromptPolling, enable_prompt_polling


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def polling(clock):
    slept: list[float] = []
    return PromptPolling(
        fast_s=0.0002, busy_window_s=0.25, clock=clock, sleeper=slept.append
    ), slept


def test_polling_sleeps_stay_as_pynetdicom_wrote_them_while_idle():
    clock = Clock()
    prompt, slept = polling(clock)
    prompt.sleep(0.001)
    assert slept == [0.001]


def test_polling_sleeps_are_cut_for_the_busy_window_after_a_store_then_restored():
    clock = Clock()
    prompt, slept = polling(clock)
    prompt.busy()
    prompt.sleep(0.001)
    clock.now += 0.2
    prompt.sleep(0.001)
    clock.now += 0.1  # 0.3 s after the store: idle again
    prompt.sleep(0.001)
    assert slept == [0.0002, 0.0002, 0.001]


def test_longer_sleeps_are_never_shortened():
    clock = Clock()
    prompt, slept = polling(clock)
    prompt.busy()
    prompt.sleep(0.5)  # e.g. a retry back-off, not a polling loop
    assert slept == [0.5]


def test_enable_routes_both_reactors_through_it_and_undo_restores_the_time_module():
    prompt = PromptPolling()
    undo = enable_prompt_polling(prompt)
    try:
        assert pynetdicom.association.time is prompt
        assert pynetdicom.dul.time is prompt
        assert prompt.monotonic is time.monotonic  # the rest of time is untouched
    finally:
        undo()
    assert pynetdicom.association.time is time
    assert pynetdicom.dul.time is time


def test_undo_leaves_a_later_install_in_place():
    first, second = PromptPolling(), PromptPolling()
    undo_first = enable_prompt_polling(first)
    undo_second = enable_prompt_polling(second)
    undo_first()
    try:
        assert pynetdicom.dul.time is second
    finally:
        undo_second()
    assert pynetdicom.dul.time is time
