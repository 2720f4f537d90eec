"""The fault tour's shared fixtures, made once per session through the CLI under test."""

import sys
from typing import Iterator

import pytest

from tests.acceptance.tour import (
    BNN,
    Tour,
    child_environment,
    lost_entries,
    prepare_fixtures,
    snapshot,
)


@pytest.fixture(scope="session")
def tour(tmp_path_factory, _ctrl_c_raises_keyboard_interrupt) -> Iterator[Tour]:
    """The tour's work folder with its fixtures: a tiny QuickNet run, its .tflite and bundle,
    an interrupted run, a float .tflite, images and image-folder data sets.

    Asks for tests/conftest.py's `_ctrl_c_raises_keyboard_interrupt` by name: the children
    inherit the SIGINT disposition of this process, and the signal cases (and the interrupted
    run made here) need a Ctrl-C that works even when pytest was started in the background.
    Fails at teardown if a case changed a shared fixture (cases work on copies).
    """
    workdir = tmp_path_factory.mktemp("tour")
    tfds_dir = workdir / "tfds-empty"
    tfds_dir.mkdir()
    tour = Tour(bnn=BNN, python=[sys.executable], workdir=workdir,
                base_env=child_environment(tfds_dir))
    prepare_fixtures(tour)
    before = snapshot(tour.fixtures)
    yield tour
    changed = lost_entries(before, snapshot(tour.fixtures), ())
    assert not changed, f"the shared fixtures changed during the tour: {changed[:5]}"
