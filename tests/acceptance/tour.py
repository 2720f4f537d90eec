"""The fault tour: bad inputs and faults a new user meets, tried on every `bnn` command.

Issue 13 ("Nothing lost, nothing silently wrong") reports a tour of bad inputs and faults.
This module is that tour as a pytest harness: `test_fault_tour.py` runs each `Case` as one
test item (its id is the case name). A case runs `bnn` as child processes, so that signals,
exit codes, stderr and memory are what a user gets, and measures whether anything that existed
before the command survived it. `execute` gives each case one of these categories:

- clean          a user mistake answered by exit code 2 and one line `Error: ...` (click's
                 usage errors count), no traceback, the message passing the case's check
                 (e.g. a range error names its own option, a bad image is named by its path);
- ok             a valid request that succeeded, and whose result passed the case's check
                 (file written and readable, accuracy printed, run resumable, ...);
- internal       a user mistake reported as "Internal error" (or exit code 1);
- traceback      a Python traceback printed;
- crash          killed by a signal, aborted (exit 134), or click's "Aborted!";
- data_lost      a file that existed before the command (the case folder holds copies of every
                 input: run folders, models, images, outputs, symlinks, FIFOs, device nodes) is
                 gone or has another sha256 / type / link target afterwards, or a case check
                 found lost work (a resumed run that retrained epochs it had completed);
- silent_wrong   exit code 0 although an error was expected, or a result that fails its check;
- refused        a valid request answered with an error;
- slow           otherwise right, but over the case's time budget (e.g. an offline data set
                 must fail in 10 s; a refused output must be refused before the conversion);
- bad_message    an error with exit code 2 whose message fails the case's check, or that is
                 buried among other lines;
- hang           killed at the case's timeout;
- skipped        the case could not be set up here (no tmpfs mount, a timing window missed).

A test item passes when its case is "clean" or "ok", is skipped when it is "skipped", and fails
otherwise, naming the category. A case whose outcome has several of these gets the first in the
order hang, data_lost, crash, traceback, internal, silent_wrong, refused, slow, bad_message; the
assertion message gives its reason and the notes the case took.

Sections follow the issue: 1 signals at each phase of a run (SIGINT/SIGTERM mid-epoch, after
the last epoch, when the epoch backup is emptied, while model.keras is written, and in the pause
`BNN_TEST_PAUSE_BEFORE_FINISH=SECONDS` opens), then `--resume`; 2 outputs that would destroy
inputs (convert onto its own input, symlinks, FIFOs, device nodes made in the case folder: a
real device node is never a target); 3 two writers on one run folder; 4 output locations that
must be checked before the long work (refused bundle, read-only and full tmpfs mounts, which
need root; skipped otherwise, always unmounted); 5 `--resume` with options that differ from the
run; 6 silent wrong results (class names, other classes, float label, 24 bit-flipped .tflite
files); 7 messages (ranges, JSON, corrupt images, offline TFDS, a 12000x12000 PNG with peak
memory); 8 the ordinary mistakes of a new user on every command; 9 self-contained runs and model
files (staged runs and distilled students that resume from their own copies of what they
started from, wherever they are and whatever became of the originals; bundles edited after bnn
wrote them, and `--overwrite` keeping the user's files; damaged and foreign weights and model
files, damaged stages.json, distillation values; `benchmarks/fashion_mnist.py`'s arguments,
run as its own `Program`; model files whose Lambda layer would run code on load; an
`.unverified` flatbuffer, a run folder being trained into, a nearly full tmpfs).

`prepare_fixtures` makes the shared fixtures once per session through the CLI under test (one
tiny QuickNet run on digits, its .tflite and Raspberry Pi bundle, an interrupted run, a float
.tflite, images, image-folder data sets; for section 9 small Keras model files written with
tf-keras, a staged run stopped in stage 1, a student of the run interrupted in epoch 2, tiny
Fashion-MNIST IDX files); each case then works in its own folder on fresh copies of the
fixtures it uses. Every child runs with TFDS_DATA_DIR pointing at an empty folder, so
TFDS never finds a cached data set. Timing budgets assume a 2-core machine (~4 s to import
TensorFlow); run the tour with `nice` on a shared machine.

File names, exit codes and rules of bnn that a case relies on are imported from bnn itself
(never restated here), so that the tour follows the code it tests.
"""

import csv
import dataclasses
import fnmatch
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from bnn_keras.errors import BnnError
from bnn_keras.training import run_inputs
from bnn_keras.training.best_epoch import BEST_DIR
from bnn_keras.training.config import (
    BACKUP_DIR,
    BEST_MODEL_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    LAST_MODEL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATUS_FILE,
    RunRecord,
)
from bnn_keras.training.data.folder import _in_test_split
from bnn_keras.training.run import TrainingInterruptedError
from bnn_keras.training.run_callbacks import read_status, write_status
from bnn_keras.training.run_lock import PARTIAL_PATTERN
from bnn_keras.training.stages import FINAL_FILES, STAGES_FILE, StagedPlan
from bnn_keras.training.starting_point import file_sha256
from cli import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR
from convert.bundle import (
    BUNDLE_FILES,
    EXPECTED_OUTPUT_FILE,
    LABELS_FILE,
    MODEL_JSON,
    RUNNER_ARGS_FILE,
    SCRIPTS,
    TFLITE_FILE,
)
from convert.flatbuffer import TFLITE_IDENTIFIER, UNVERIFIED_SUFFIX
from convert.workflow import DEFAULT_OUTPUT

# The checkout under test: the children import its `cli`, whatever is installed in the venv.
REPO_ROOT = Path(__file__).resolve().parents[2]
BNN = [sys.executable, "-c", "import cli; cli.main()"]

# ----------------------------------------------------------------------------------------------
# Outcome categories
# ----------------------------------------------------------------------------------------------

# Worst first: a case gets the first category among its flags.
PRECEDENCE = ("hang", "data_lost", "crash", "traceback", "internal", "silent_wrong", "refused",
              "slow", "bad_message")
PASSING = ("clean", "ok")

ERROR_BUDGET_S = 25.0     # a one-line answer to a user mistake (TensorFlow's import is ~4 s)
OK_BUDGET_S = 240.0
BEFORE_WORK_BUDGET_S = 15.0   # output checks that must happen before converting / training
OFFLINE_BUDGET_S = 10.0
OFFLINE_TIMEOUT_S = 330.0  # long enough to measure TFDS giving up (216 s for mnist in the issue)
DEFAULT_TIMEOUT_S = 180.0

# The tiny network every training case uses: QuickNet with 16-128 filters on 8x8 digits,
# float32 (no bf16 emulation on machines without it); ~14 s per run on 2 cores.
TINY_MODEL = ["quicknet", "--dataset", "digits", "--model-option",
              "section_filters=[16,32,64,128]", "--image-size", "8", "--batch-size", "32",
              "--precision", "float32", "--verbose", "0"]


def train_args(epochs: int = 1, steps: int = 2, *extra: str, out: str = "{d}/run") -> List[str]:
    """`bnn train` of the tiny model; `extra` options come last (click keeps the last value)."""
    return ["train", *TINY_MODEL, "--epochs", str(epochs), "--steps-per-epoch", str(steps),
            "--lr", "3e-3", "-o", out, *extra]


# The staged recipe the staged cases train: ReActNet-A's two steps at 8x8 with widths 8-16 (a
# few seconds a stage), as tests/training/test_stages.py trains it.
STAGED_MODEL = ["reactnet-a", "--recipe", "paper", "--model-option", "widths=[8,16,16]",
                "--dataset", "digits", "--image-size", "8", "--epochs", "1",
                "--steps-per-epoch", "2", "--batch-size", "8", "--precision", "float32",
                "--no-track-flips", "--verbose", "0"]
# The student fixture: the tiny model distilled from the tour's run, interrupted in epoch 2.
STUDENT_EPOCHS = 3

# bnn's test pauses (`bnn_keras.training.run._test_pause`): a line on stderr, then a sleep.
PAUSE_AFTER_FIT = "BNN_TEST_PAUSE_AFTER_FIT"
PAUSE_BEFORE_FINISH = "BNN_TEST_PAUSE_BEFORE_FINISH"

# The tour's own names in its model-file fixtures (MODEL_FILES_CODE): the Lambda layer, the
# file its function writes (relative to the loading process's folder, so each case has its
# own), the layer class no module registers, and the layer of the foreign weights file.
LAMBDA_LAYER = "evil"
LAMBDA_MARKER = "lambda-ran.txt"
UNREGISTERED_CLASS = "UnregisteredBlock"
FOREIGN_LAYER = "foreign_dense"


def staged_args(teacher: str, out: str) -> List[str]:
    """`bnn train` of the tiny staged recipe, distilled from `teacher`."""
    return ["train", *STAGED_MODEL, "--teacher", teacher, "-o", out]


@dataclasses.dataclass(frozen=True)
class Program:
    """A command a case runs instead of `bnn` (`Case.program`).

    Attributes:
        argv: The command before the case's arguments.
        shown: How a user types it (for the outcome's command line).
        error_prefix: How its one-line errors begin (bnn's: "Error:").
    """

    argv: Tuple[str, ...]
    shown: str
    error_prefix: str


BNN_ERROR = "Error:"
FASHION_MNIST_SCRIPT = REPO_ROOT / "benchmarks" / "fashion_mnist.py"
# argparse names the script by its `prog`, the script's file name.
FASHION_MNIST = Program(argv=(sys.executable, str(FASHION_MNIST_SCRIPT)),
                        shown="python benchmarks/fashion_mnist.py",
                        error_prefix=f"{FASHION_MNIST_SCRIPT.name}: error:")


def child_environment(tfds_dir: Path) -> Dict[str, str]:
    """The environment of every child: this one, made the same for every checkout and shell.

    Args:
        tfds_dir: An empty folder for TFDS_DATA_DIR, so TFDS never finds a cached data set.
    """
    env = dict(os.environ, TFDS_DATA_DIR=str(tfds_dir), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    # A pause set for a test would hold every training case; the cases that want one set it.
    env.pop("BNN_TEST_PAUSE_BEFORE_FINISH", None)
    # tests/conftest.py sets it for the pytest process; bnn must work with the user's default.
    env.pop("TF_USE_LEGACY_KERAS", None)
    return env


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One finished child process."""

    argv: List[str]
    rc: Optional[int]          # None: killed at the timeout
    seconds: float
    stdout: str
    stderr: str
    max_rss_mb: float = 0.0
    pid: int = 0

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


class Proc:
    """A started child: stdout/stderr go to files, so nothing blocks on a full pipe.

    The child starts a session of its own, so a signal sent to its process group reaches it
    (and its children) as a terminal's Ctrl-C would, and never the pytest process. Its SIGINT
    disposition is inherited: tests/conftest.py installs Python's handler for the session, so a
    pytest started in the background (SIGINT ignored) still gives its children a working Ctrl-C.
    """

    def __init__(self, argv: List[str], cwd: Path, env: Dict[str, str], log_prefix: Path):
        self.argv = argv
        # Appended, not `with_suffix`: that would drop the step number of `CASE.N`, and the
        # children of one case (running at once, in the signal and two-writer cases) would
        # write into one file.
        self.out_path = log_prefix.parent / f"{log_prefix.name}.out"
        self.err_path = log_prefix.parent / f"{log_prefix.name}.err"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                      stdout=self._out, stderr=self._err,
                                      start_new_session=True)
        self.pid = self.popen.pid
        self.result: Optional[Run] = None

    def poll(self) -> bool:
        """True once the child has exited (reaped with its resource usage)."""
        if self.result is not None:
            return True
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._finish(os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024.0)
        return True

    def signal(self, signum: int) -> None:
        """Sends `signum` to the child's process group, as a terminal's Ctrl-C would."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> Run:
        """Waits until `timeout` seconds after the start, then kills the child (rc None)."""
        deadline = self.started + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                _, status, usage = os.wait4(self.pid, 0)
                self._finish(None, usage.ru_maxrss / 1024.0)
                break
            time.sleep(0.02)
        return self.result

    def _finish(self, rc: Optional[int], rss_mb: float) -> None:
        self.popen.returncode = rc if rc is not None else -9  # tell Popen it was reaped
        seconds = time.monotonic() - self.started
        self._out.close()
        self._err.close()
        self.result = Run(self.argv, rc, seconds, _read_text(self.out_path),
                          _read_text(self.err_path), rss_mb, self.pid)


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


# ----------------------------------------------------------------------------------------------
# Files: snapshots, fixtures
# ----------------------------------------------------------------------------------------------


def describe_entry(path: Path) -> str:
    """What a path is, without following symlinks or opening FIFOs and devices."""
    st = path.lstat()
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "symlink -> " + os.readlink(path)
    if stat.S_ISREG(mode):
        return "file " + file_sha256(path)
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return f"char device {os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISDIR(mode):
        return "dir"
    return "other"


def snapshot(root: Path) -> Dict[str, str]:
    """Every entry under `root` (files hashed, links by target, special files by type)."""
    entries = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            try:
                entries[str(path.relative_to(root))] = describe_entry(path)
            except OSError as exc:
                entries[str(path.relative_to(root))] = f"unreadable {exc.errno}"
    return entries


def lost_entries(before: Dict[str, str], after: Dict[str, str],
                 may_change: Sequence[str]) -> List[str]:
    """Entries of `before` that are gone or differ in `after` (folders only when gone)."""
    lost = []
    for rel, what in before.items():
        if any(fnmatch.fnmatch(rel, pattern) for pattern in may_change):
            continue
        now = after.get(rel)
        if now is None:
            lost.append(f"{rel} gone")
        elif now != what and what != "dir":
            lost.append(f"{rel} was {what[:24]}, now {now[:24]}")
    return lost


def png_bytes(width: int, height: int, rows, channels: int = 1) -> bytes:
    """A PNG (8-bit gray or RGB) from an iterable of `height` rows of raw bytes, streamed."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(b"\x00" + bytes(row)) for row in rows]
    parts.append(compressor.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def bmp_bytes(width: int, height: int, pixel: Callable[[int, int], Tuple[int, int, int]]) -> bytes:
    """A 24-bit BMP."""
    row_size = (width * 3 + 3) // 4 * 4
    rows = []
    for y in reversed(range(height)):
        row = bytearray()
        for x in range(width):
            r, g, b = pixel(x, y)
            row += bytes((b, g, r))
        rows.append(bytes(row) + b"\x00" * (row_size - len(row)))
    data = b"".join(rows)
    header = struct.pack("<2sIHHI", b"BM", 54 + len(data), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(data), 2835, 2835, 0, 0)
    return header + info + data


def npy_bytes(shape: Tuple[int, ...]) -> bytes:
    """A float32 .npy of zeros."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    count = 1
    for d in shape:
        count *= d
    return (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
            + bytes(4 * count))


def pattern_image(kind: int, seed: int, size: int = 8) -> bytes:
    """An 8x8 gray PNG: bars in one of three orientations, with noise."""
    rng = random.Random(seed)
    rows = []
    for y in range(size):
        row = []
        for x in range(size):
            on = (y % 3 == 0, x % 3 == 0, (x + y) % 3 == 0)[kind % 3]
            row.append(max(0, min(255, (200 if on else 30) + rng.randint(-25, 25))))
        rows.append(row)
    return png_bytes(size, size, rows)


def write_image_folder(root: Path, classes: Sequence[str], per_class: int) -> None:
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"img{i:02d}.png").write_bytes(pattern_image(k, 1000 * k + i))


def flip_bit(data: bytes, position: int, bit: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 1 << bit
    return bytes(out)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

Check = Callable[["CaseEnv", Run], Optional[Union[str, Tuple[str, str]]]]


@dataclasses.dataclass
class Case:
    """One tour case.

    Attributes:
        name: Unique name, the test item's id (`pytest -k NAME`).
        section: The issue's section ("1 signals", ..., "8 new user").
        args: `bnn` arguments; `{name}` placeholders are paths (see `FIXTURE_COPIES`).
        expect: "error" (a clean exit-2 error), "ok" (exit 0 and `check` passes), "either",
            or "custom" (the runner flags what is wrong; exit 0 is ok, an error clean).
        check: On success, checks the result; on an error, checks the message. Returns None,
            a reason (silent_wrong for a result, bad_message for a message), or (category,
            reason).
        setup: Creates the case's files (may call `env.mount_tmpfs`; raise `Skip`).
        run: A custom runner (signals, races) returning the main `Run`; it may add flags with
            `env.flag(category, reason)`.
        env: Extra environment variables for the children.
        budget: Seconds above which an otherwise right answer is `slow`.
        timeout: Seconds before a child is killed (`hang`).
        max_seconds: Seconds pytest allows the whole case (setup, every child, checks) when
            that may exceed setup.cfg's per-test timeout; the children's own timeouts come
            first, so a hang is reported as the tour's `hang`, not as pytest's timeout.
        may_change: Globs (relative to the case folder) of files the command may rewrite.
        program: What the case's `args` are given to (None: `bnn`).
        cwd: The children's working folder, relative to the case folder (made if missing).
    """

    name: str
    section: str
    args: Sequence[str] = ()
    expect: str = "error"
    check: Optional[Check] = None
    setup: Optional[Callable[["CaseEnv"], None]] = None
    run: Optional[Callable[["CaseEnv"], Run]] = None
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    budget: Optional[float] = None
    timeout: float = DEFAULT_TIMEOUT_S
    max_seconds: Optional[float] = None
    may_change: Sequence[str] = ()
    program: Optional[Program] = None
    cwd: str = ""

    @property
    def error_prefix(self) -> str:
        return self.program.error_prefix if self.program else BNN_ERROR

    @property
    def shown(self) -> str:
        return self.program.shown if self.program else "bnn"

    def time_budget(self) -> float:
        if self.budget is not None:
            return self.budget
        return ERROR_BUDGET_S if self.expect == "error" else OK_BUDGET_S


class Skip(Exception):
    """The case cannot run here."""


@dataclasses.dataclass
class Tour:
    """What every case shares: how to run the CLI, the work folder, the fixtures' facts.

    Attributes:
        bnn: The command that runs the CLI under test.
        python: The Python that imports the same checkout (for the float .tflite).
        workdir: Holds `fixtures/`, one folder per case under `cases/`, and `logs/`.
        base_env: The children's environment (`child_environment`).
        facts: What the fixtures measured (the intact model's accuracy, predict's peak
            memory) and why a fixture is missing, if it is.
    """

    bnn: List[str]
    python: List[str]
    workdir: Path
    base_env: Dict[str, str]
    facts: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fixtures(self) -> Path:
        return self.workdir / "fixtures"


# `{key}` placeholders that stand for a fresh copy of a fixture in the case folder:
# key -> (path under WORKDIR/fixtures, name in the case folder). The others: {d} the case folder,
# {nope} a path that does not exist, {empty} an empty folder, {txt} a text file, {empty_EXT} an
# empty file.EXT, {trunc_tflite} / {trunc_keras} / {trunc_png} / {trunc_h5} the first bytes of a
# valid file, {npy_bad} a (4, 3) float32 .npy, {random_h5} random bytes named .h5.
FIXTURE_COPIES = {
    "run": ("run", "run"),                        # a finished run folder (2 epochs)
    "interrupted": ("interrupted", "interrupted"),  # SIGINT in epoch 2 of 3; backup/ has epoch 1
    "model": (f"run/{MODEL_FILE}", MODEL_FILE),   # the model file alone, no config.json
    "tflite": ("model.tflite", "model.tflite"),   # `bnn convert` of the run
    "bundle": ("pi", "pi"),                       # its Raspberry Pi bundle
    "float": ("float.tflite", "float.tflite"),    # a plain float TFLite model, no bnn metadata
    "img": ("digit.png", "digit.png"),            # 8x8 gray PNG
    "rgb": ("rgb.png", "rgb.png"),                # 32x32 RGB PNG
    "bmp": ("digit.bmp", "digit.bmp"),            # 8x8 24-bit BMP
    "shapes": ("shapes", "shapes"),               # image folder, classes a b c
    "digitsfolder": ("digitsfolder", "digitsfolder"),  # image folder, the run's classes
    # Section 9 (MODEL_FILES_CODE): Keras files of 8x8x1 digits classifiers.
    "teacher": ("teacher.keras", "teacher.keras"),  # Flatten, Dense, softmax
    "logits": ("logits.keras", "logits.keras"),     # the same without the softmax
    "foreign": ("foreign.h5", "foreign.h5"),        # save_weights of a Dense(10) model
    "custom": ("custom.keras", "custom.keras"),     # a layer of UNREGISTERED_CLASS
    "evil": ("evil.h5", "evil.h5"),                 # legacy .h5 whose Lambda writes LAMBDA_MARKER
    # teacher.keras and run/: the staged recipe distilled from it, stopped in stage 1 of 2
    "staged": ("staged", "staged"),
    # runs/teacher (a copy of `run`) and runs/student: the tiny model distilled from it (started
    # in distill/ with `--teacher runs/teacher`), interrupted in epoch 2 of STUDENT_EPOCHS
    "distill": ("distill", "distill"),
    "fashion": ("fashion", "fashion"),              # tiny Fashion-MNIST IDX files
}


class CaseEnv:
    """A case's folder, its placeholders (fresh copies of fixtures, junk files) and processes."""

    def __init__(self, tour: Tour, case: Case):
        self.tour = tour
        self.case = case
        self.dir = tour.workdir / "cases" / case.name
        self.logs = tour.workdir / "logs"
        self.steps: List[Run] = []
        self.flags: List[Tuple[str, str]] = []
        self.notes: List[str] = []
        self.facts: Dict[str, Any] = {}  # what a setup made that a check needs
        self.signalled: set = set()  # ids of runs the case killed on purpose
        self.passed_as: Optional[str] = None  # a custom runner's category when nothing is flagged
        self._mounts: List[Path] = []
        self._made: Dict[str, Path] = {}
        self._started: List[Proc] = []

    # -- placeholders ---------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        """The path a `{key}` placeholder stands for, creating it on first use."""
        if key not in self._made:
            self._made[key] = self._make(key)
        return self._made[key]

    def _copy_fixture(self, name: str, dest: str) -> Path:
        source = self.tour.fixtures / name
        if not source.exists():
            failed = self.tour.facts.get(f"failed {name}")
            if failed:  # bnn could not make it: the case fails for that, it is not skipped
                raise FixtureError(failed)
            raise Skip(self.tour.facts.get(f"missing {name}", f"fixture {name} is missing"))
        target = self.dir / dest
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
        return target

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def _make(self, key: str) -> Path:
        fx = self.tour.fixtures
        if key == "d":
            return self.dir
        if key in FIXTURE_COPIES:
            return self._copy_fixture(*FIXTURE_COPIES[key])
        if key == "nope":
            return self.dir / "nope"
        if key == "empty":
            (self.dir / "empty").mkdir()
            return self.dir / "empty"
        if key == "txt":
            return self._write("notes.txt", b"hello, I am not a model\n")
        if key.startswith("empty_"):
            return self._write(f"empty.{key[6:]}", b"")
        if key == "trunc_tflite":
            return self._write("trunc.tflite", (fx / "model.tflite").read_bytes()[:4000])
        if key == "trunc_keras":
            return self._write("trunc.keras", (fx / "run" / MODEL_FILE).read_bytes()[:4000])
        if key == "trunc_png":
            data = (fx / "rgb.png").read_bytes()
            return self._write("trunc.png", data[:len(data) // 2])
        if key == "npy_bad":
            return self._write("inputs.npy", npy_bytes((4, 3)))
        if key == "trunc_h5":
            data = (fx / "foreign.h5").read_bytes()
            return self._write("trunc.h5", data[:len(data) // 2])
        if key == "random_h5":
            return self._write("random.h5", random.Random(0).randbytes(4096))
        raise KeyError(key)

    def expand(self, args: Sequence[str]) -> List[str]:
        env = self

        class Lookup(dict):
            def __missing__(self, key):
                return str(env.path(key))

        return [str(a).format_map(Lookup()) for a in args]

    # -- processes ------------------------------------------------------------------------------

    def child_env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(self.tour.base_env)
        env.update(self.case.env)
        env.update(extra or {})
        return env

    def workdir(self, cwd: Union[str, Path, None] = None) -> Path:
        """The children's folder: `cwd` (relative to the case folder), else the case's."""
        folder = self.dir / (self.case.cwd if cwd is None else cwd)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def start(self, argv: List[str], extra_env: Optional[Dict[str, str]] = None,
              cwd: Union[str, Path, None] = None) -> Proc:
        prefix = self.logs / f"{self.case.name}.{len(self._started)}"
        proc = Proc(argv, self.workdir(cwd), self.child_env(extra_env), prefix)
        self._started.append(proc)
        return proc

    def finish(self, proc: Proc, timeout: Optional[float] = None) -> Run:
        run = proc.wait(timeout or self.case.timeout)
        self.steps.append(run)
        return run

    def bnn(self, args: Sequence[str], timeout: Optional[float] = None,
            extra_env: Optional[Dict[str, str]] = None,
            cwd: Union[str, Path, None] = None) -> Run:
        return self.finish(self.start_bnn(args, extra_env, cwd), timeout)

    def start_bnn(self, args: Sequence[str], extra_env: Optional[Dict[str, str]] = None,
                  cwd: Union[str, Path, None] = None) -> Proc:
        return self.start([*self.tour.bnn, *self.expand(args)], extra_env, cwd)

    def run_command(self) -> Run:
        """The case's own command: its `args` given to its program (`bnn` by default)."""
        if self.case.program is None:
            return self.bnn(self.case.args)
        return self.finish(self.start([*self.case.program.argv, *self.expand(self.case.args)]))

    def python(self, code: str, *args: str, timeout: Optional[float] = None) -> Run:
        return self.finish(self.start([*self.tour.python, "-c", code, *args]), timeout)

    def flag(self, category: str, reason: str) -> None:
        self.flags.append((category, reason))

    def kill_all(self) -> None:
        """Kills the children still running (a case that failed half-way leaves none behind)."""
        for proc in self._started:
            if proc.result is None:
                proc.signal(signal.SIGKILL)
                proc.wait(5)

    # -- mounts ---------------------------------------------------------------------------------

    def mount_tmpfs(self, rel: str, size: str = "64k", files: Optional[Dict[str, bytes]] = None,
                    readonly: bool = False, leave_free: Optional[int] = None) -> Path:
        """A tiny tmpfs at `rel` (root only), with `files`, optionally read-only or nearly full."""
        target = self.dir / rel
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode:
            raise Skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:80]}")
        self._mounts.append(target)
        for name, data in (files or {}).items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(data)
        if leave_free is not None:
            vfs = os.statvfs(target)
            free = vfs.f_bavail * vfs.f_frsize
            with open(target / "filler.bin", "wb") as f:
                f.write(b"\x00" * max(0, free - leave_free))
        if readonly:
            done = subprocess.run(["mount", "-o", "remount,ro", str(target)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise Skip(f"cannot remount read-only: {done.stderr.strip()[:80]}")
        return target

    def unmount_all(self) -> None:
        for target in reversed(self._mounts):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)
        self._mounts.clear()


# ----------------------------------------------------------------------------------------------
# Reading results
# ----------------------------------------------------------------------------------------------

_PROGRESS = re.compile(r"(\d+it \[|it/s\]|url/s\]|file/s\]|MiB/s\]|\|\s*\d+/\d+ \[)")
_CLICK_USAGE = ("Usage:", "Try '")


def message_lines(stderr: str) -> List[str]:
    """stderr without blank lines, our `Warning:` lines, progress bars and click's usage lines."""
    lines = []
    for raw in stderr.replace("\r", "\n").splitlines():
        line = raw.strip()
        if (not line or line.startswith("Warning:") or line.startswith(_CLICK_USAGE)
                or _PROGRESS.search(line)):
            continue
        lines.append(line)
    return lines


def first_message(run: Run, stdout_too: bool = True, prefix: str = BNN_ERROR) -> str:
    """The `Error:` line (or `prefix`'s), else the first message line of stderr, else stdout's
    last line."""
    lines = message_lines(run.stderr)
    for line in lines:
        if line.startswith((prefix, "Internal error")):
            return line
    if lines or not stdout_too:
        return lines[0] if lines else ""
    out = [line for line in run.stdout.splitlines() if line.strip()]
    return out[-1].strip() if out else ""


def has_traceback(run: Run) -> bool:
    return "Traceback (most recent call last)" in run.stderr + run.stdout


def is_crash(run: Run) -> bool:
    return (run.rc is not None and (run.rc < 0 or run.rc in (134, 139))) or any(
        marker in run.stderr for marker in ("Fatal Python error", "Aborted!", "core dumped"))


def clean_error(run: Run, prefix: str = BNN_ERROR) -> bool:
    lines = message_lines(run.stderr)
    return run.rc == EXIT_USER_ERROR and len(lines) == 1 and lines[0].startswith(prefix)


def read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def recorded_config(run_dir: Path):
    """The run's options as its config.json records them (read by bnn's own reader), or None."""
    try:
        return RunRecord.read(run_dir).config
    except BnnError:
        return None


def history_rows(run_dir: Path) -> int:
    try:
        lines = (run_dir / HISTORY_FILE).read_text().splitlines()
    except OSError:
        return 0
    return max(0, len([x for x in lines if x]) - 1)


def partial_files(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if fnmatch.fnmatch(p.name, PARTIAL_PATTERN))


def model_being_saved(folder: Path) -> bool:
    """The temporary model file is there (status.json and history.csv have their own).

    `bnn_keras.files.atomic_path` names it after the final file: `.model.partial-PID.keras`.
    """
    model_prefix = f".{Path(MODEL_FILE).stem}."
    return any(p.name.startswith(model_prefix) for p in folder.glob(PARTIAL_PATTERN))


def accuracy_in(text: str) -> Optional[str]:
    match = re.search(r"test accuracy ([0-9.]+)", text)
    return match.group(1) if match else None


# -- checks (Check functions) -------------------------------------------------------------------


def says(*fragments: str, any_of: Sequence[str] = (), not_: Sequence[str] = ()) -> Check:
    """The error message holds every fragment, one of `any_of`, and none of `not_`."""

    def check(env: CaseEnv, run: Run):
        text = first_message(run, prefix=env.case.error_prefix).lower()
        missing = [f for f in fragments if env.expand([f])[0].lower() not in text]
        if missing:
            return f"message lacks {missing}"
        if any_of and not any(env.expand([f])[0].lower() in text for f in any_of):
            return f"message names none of {list(any_of)}"
        found = [f for f in not_ if f.lower() in text]
        return f"message says {found}" if found else None

    return check


def stdout_has(*fragments: str, not_: Sequence[str] = ()) -> Check:
    def check(env: CaseEnv, run: Run):
        missing = [f for f in fragments if f not in run.stdout]
        if missing:
            return f"output lacks {missing}"
        found = [f for f in not_ if f in run.stdout]
        return f"output says {found}" if found else None

    return check


def is_tflite(rel: str) -> Check:
    def check(env: CaseEnv, run: Run):
        path = env.dir / rel
        if not path.is_file():
            return f"{rel} was not written"
        head = path.read_bytes()[:8]
        return None if head[4:8] == TFLITE_IDENTIFIER else f"{rel} is not a TFLite flatbuffer"

    return check


def valid_json_output(env: CaseEnv, run: Run):
    try:
        json.loads(run.stdout)
    except ValueError:
        return "--json printed no valid JSON"
    return None


def finished_run(rel: str, epochs: int, session_epochs: Optional[int] = None,
                 config_epochs: Optional[int] = None) -> Check:
    """RUN_DIR holds a finished run of `epochs` epochs with a loadable model.keras."""

    def check(env: CaseEnv, run: Run):
        run_dir = env.dir / rel
        metrics = read_json(run_dir / METRICS_FILE)
        if metrics.get("epochs") != epochs:
            return f"{METRICS_FILE} says {metrics.get('epochs')} epochs, expected {epochs}"
        if history_rows(run_dir) != epochs:
            return f"{HISTORY_FILE} has {history_rows(run_dir)} rows, expected {epochs}"
        if session_epochs is not None and metrics.get("epochs_this_session") != session_epochs:
            return ("data_lost", f"trained {metrics.get('epochs_this_session')} epochs this "
                                 f"session, expected {session_epochs} (completed epochs redone)")
        config = recorded_config(run_dir)
        if config_epochs is not None and (config is None or config.epochs != config_epochs):
            return f"{CONFIG_FILE} does not record epochs={config_epochs}"
        if partial_files(run_dir):
            return f"partial files left: {partial_files(run_dir)}"
        loaded = env.bnn(["summary", f"{{d}}/{rel}"])
        if loaded.rc != 0:
            return ("data_lost", f"{MODEL_FILE} does not load: {first_message(loaded)}")
        return None

    return check


def nothing_written(*rels: str) -> Check:
    def check(env: CaseEnv, run: Run):
        made = [r for r in rels if (env.dir / r).exists() or (env.dir / r).is_symlink()]
        return ("silent_wrong", f"refused, but wrote {made}") if made else None

    return check


# ----------------------------------------------------------------------------------------------
# Custom runners
# ----------------------------------------------------------------------------------------------


def wait_until(proc: Proc, predicate: Callable[[], bool], timeout: float,
               interval: float = 0.01) -> bool:
    """Polls `predicate` until it holds (True) or the process exits / time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll():
            return predicate()
        time.sleep(interval)
    return False


def _has_backup(run_dir: Path) -> bool:
    return any((run_dir / BACKUP_DIR).rglob("*.index"))


SIGNAL_PHASES = {
    # phase: (epochs, steps per epoch, extra delay after the predicate, poll interval)
    "mid_epoch": (3, 40, 0.5, 0.01),
    "after_last_epoch": (2, 15, 0.0, 0.005),
    "backup_emptied": (2, 15, 0.0, 0.002),
    "during_save": (2, 15, 0.0, 0.002),
    "pause_before_finish": (2, 15, 1.0, 0.01),
}


def signal_runner(phase: str, signum: int) -> Callable[[CaseEnv], Run]:
    """Train, signal at `phase`, then `bnn train --resume`: no epoch, model or file may be lost."""
    epochs, steps, delay, interval = SIGNAL_PHASES[phase]

    def predicate_for(run_dir: Path) -> Callable[[], bool]:
        def done_epochs() -> bool:
            wanted = 1 if phase == "mid_epoch" else epochs
            return read_status(run_dir).get("epochs_completed", 0) >= wanted

        if phase == "backup_emptied":
            # Keras empties backup/ when fit returns; the fixed code may keep it until the end,
            # so a partial or final model.keras also counts as "the save has started".
            return lambda: done_epochs() and (
                not _has_backup(run_dir) or model_being_saved(run_dir)
                or (run_dir / MODEL_FILE).exists())
        if phase == "during_save":
            return lambda: model_being_saved(run_dir)
        return done_epochs

    def run(env: CaseEnv) -> Run:
        env.passed_as = "ok"
        run_dir = env.dir / "run"
        proc = env.start_bnn(train_args(epochs, steps))
        hit = wait_until(proc, predicate_for(run_dir), timeout=240, interval=interval)
        if hit and delay:
            time.sleep(delay)
        at_signal = read_status(run_dir)
        state = (f"status {at_signal.get('state')} {at_signal.get('epochs_completed')}/"
                 f"{at_signal.get('epochs')}, backup={'yes' if _has_backup(run_dir) else 'no'}, "
                 f"{MODEL_FILE}={'yes' if (run_dir / MODEL_FILE).exists() else 'no'}, "
                 f"partial={len(partial_files(run_dir))}")
        exited_first = proc.poll()
        if hit and not exited_first:
            proc.signal(signum)
        first = env.finish(proc, 240)
        if not hit or exited_first:
            env.flag("skipped", f"window missed: train ended (rc {first.rc}) before the signal")
            return first
        if at_signal.get("state") == "finished":
            env.flag("skipped", "window missed: the run had finished when the signal came")
            return first
        env.notes.append(f"signalled at {state}; train rc {first.rc}")
        env.signalled.add(id(first))
        # Exiting through the signal itself, or click's "Aborted!" after Ctrl-C, is how a
        # process may end; what counts is the run folder, checked through --resume below.
        expected_end = first.rc in (0, EXIT_USER_ERROR, TrainingInterruptedError.exit_code,
                                    128 + signal.SIGTERM, -signum) or (
            first.rc == EXIT_INTERNAL_ERROR and "Aborted!" in first.stderr)
        if not expected_end or "Fatal Python error" in first.stderr:
            env.flag("crash", f"the signalled train ended with rc {first.rc}: "
                              f"{first_message(first)[:100]}")
        completed = read_status(run_dir).get("epochs_completed",
                                             at_signal.get("epochs_completed", 0)) or 0
        before = snapshot(run_dir)
        resumed = env.bnn(["train", "--resume", "{d}/run", "--verbose", "0"], timeout=300)
        env.notes.append(f"resume rc {resumed.rc}: {first_message(resumed)[:90]}")
        if resumed.rc == 0:
            problem = finished_run("run", epochs, session_epochs=epochs - completed)(env, resumed)
            if problem:
                env.flag(*(problem if isinstance(problem, tuple) else ("silent_wrong", problem)))
        elif clean_error(resumed) and "finish" in first_message(resumed).lower():
            lost = lost_entries(before, snapshot(run_dir), ())
            if lost:
                env.flag("data_lost", f"--resume of a finished run changed {lost[:2]}")
            problem = finished_run("run", epochs)(env, resumed)
            if problem:
                category, reason = problem if isinstance(problem, tuple) else ("data_lost", problem)
                env.flag(category, f"run called finished, but {reason}")
        elif (resumed.rc is not None and not is_crash(resumed)
              and "Internal error" not in resumed.stderr):
            env.flag("data_lost", f"--resume cannot continue (rc {resumed.rc}): "
                                  f"{first_message(resumed)[:100]}")
        return resumed

    return run


def two_writers_runner(gap: Optional[float]) -> Callable[[CaseEnv], Run]:
    """Two `bnn train -o D`: started `gap` s apart, or (None) the second once the first runs."""

    def run(env: CaseEnv) -> Run:
        run_dir = env.dir / "run"
        first = env.start_bnn(train_args(2, 15, "--seed", "1"))
        if gap is None:
            if not wait_until(first, lambda: read_status(run_dir).get("state") == "running", 240):
                env.flag("skipped", "the first train never reached 'running'")
                return env.finish(first, 240)
        else:
            time.sleep(gap)
        second = env.start_bnn(train_args(2, 15, "--seed", "2"))
        b = env.finish(second, 300)
        a = env.finish(first, 300)
        env.notes.append(f"first rc {a.rc} ({a.seconds:.0f} s), "
                         f"second rc {b.rc} ({b.seconds:.0f} s)")
        winners = [(r, seed) for r, seed in ((a, 1), (b, 2)) if r.rc == 0]
        losers = [r for r in (a, b) if r.rc != 0]
        config = recorded_config(run_dir)
        recorded_seed = config.seed if config is not None else None
        metrics = read_json(run_dir / METRICS_FILE)
        if len(winners) == 2:
            reported = [accuracy_in(r.stdout) for r in (a, b)]
            env.flag("data_lost", f"both exited 0 (accuracies {reported}); the folder holds seed "
                                  f"{recorded_seed}'s config and test accuracy "
                                  f"{metrics.get('test_accuracy', float('nan')):.4f}")
            return b
        if len(winners) == 1:
            winner, seed = winners[0]
            loser = losers[0]
            if recorded_seed != seed:
                env.flag("data_lost", f"the winner had seed {seed}, "
                                      f"{CONFIG_FILE} says {recorded_seed}")
            elif accuracy_in(winner.stdout) != f"{metrics.get('test_accuracy', -1):.4f}":
                env.flag("data_lost", f"the winner's printed accuracy is not {METRICS_FILE}'s")
            if not clean_error(loser):
                if "Internal error" in loser.stderr or loser.rc == EXIT_INTERNAL_ERROR:
                    env.flag("internal", f"the second writer: {first_message(loser)[:100]}")
                else:
                    env.flag("bad_message", f"the second writer: rc {loser.rc} "
                                            f"{first_message(loser)[:80]}")
            elif gap is None and str(winner.pid) not in first_message(loser):
                env.flag("bad_message", "the refusal does not name the holder's PID")
            if loser.seconds > ERROR_BUDGET_S:
                env.flag("slow", f"the second writer failed after {loser.seconds:.0f} s")
            return loser
        env.flag("data_lost",
                 f"no train finished: {first_message(a)[:60]} / {first_message(b)[:60]}")
        return b

    return run


def resume_while_training(env: CaseEnv) -> Run:
    """`bnn train --resume D` while the train writing D still runs: refused at once, naming it."""
    run_dir = env.dir / "run"
    first = env.start_bnn(train_args(3, 40))
    if not wait_until(first, lambda: read_status(run_dir).get("epochs_completed", 0) >= 1, 240):
        env.flag("skipped", "the train ended before its first epoch was seen")
        return env.finish(first, 240)
    second = env.bnn(["train", "--resume", "{d}/run", "--verbose", "0"], timeout=300)
    a = env.finish(first, 300)
    env.notes.append(f"train rc {a.rc}, resume rc {second.rc} ({second.seconds:.0f} s)")
    if second.rc == 0:
        env.flag("silent_wrong", "a second writer resumed a run that was still training")
    elif clean_error(second) and str(a.pid) not in first_message(second):
        env.flag("bad_message", "the refusal does not name the holder's PID")
    if a.rc != 0:
        env.flag("data_lost", f"the first train failed: {first_message(a)[:100]}")
    else:
        problem = finished_run("run", 3)(env, a)
        if problem:
            env.flag("data_lost", problem if isinstance(problem, str) else problem[1])
    return second


def pixel_bomb(env: CaseEnv) -> Run:
    """predict on a 12000x12000 PNG: refused, or answered within a modest memory budget."""
    big = env.dir / "huge.png"
    side = 12000
    big.write_bytes(png_bytes(side, side, (bytes(side) for _ in range(side))))
    result = env.bnn(["predict", "{tflite}", str(big)], timeout=300)
    reference = env.tour.facts["predict_rss_mb"]
    limit = max(reference + 400.0, 1200.0)
    env.notes.append(f"peak RSS {result.max_rss_mb:.0f} MB (a small image: {reference:.0f} MB)")
    if result.rc == 0 and result.max_rss_mb > limit:
        env.flag("silent_wrong", f"peak RSS {result.max_rss_mb:.0f} MB > {limit:.0f} MB")
    return result


def bitflip_runner(index: int, count: int) -> Callable[[CaseEnv], Run]:
    """evaluate on the .tflite with one bit flipped: an error, or the very same accuracy."""

    def run(env: CaseEnv) -> Run:
        data = (env.tour.fixtures / "model.tflite").read_bytes()
        position = int(len(data) * (index + 0.5) / count)
        flipped = env.dir / "flipped.tflite"
        flipped.write_bytes(flip_bit(data, position, index % 8))
        result = env.bnn(["evaluate", str(flipped)])
        reference = env.tour.facts["accuracy"]
        got = accuracy_in(result.stdout)
        env.notes.append(f"byte {position} bit {index % 8}: accuracy {got} (intact {reference})")
        if result.rc == 0 and got != reference and "Warning" not in result.stderr:
            env.flag("silent_wrong", f"accuracy {got} instead of {reference}, no warning")
        return result

    return run


# ----------------------------------------------------------------------------------------------
# Setups
# ----------------------------------------------------------------------------------------------


def uses(*keys: str) -> Callable[[CaseEnv], None]:
    """A setup that only makes the placeholders' files (so they are in the snapshot)."""

    def setup(env: CaseEnv) -> None:
        for key in keys:
            env.path(key)

    return setup


def then(*setups: Callable[[CaseEnv], None]) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        for one in setups:
            one(env)

    return setup


def stale_running_status(key: str) -> Callable[[CaseEnv], None]:
    """status.json says "running" for a process that is gone, as after a SIGKILL."""

    def setup(env: CaseEnv) -> None:
        run_dir = env.path(key)
        status = read_status(run_dir)
        write_status(run_dir, "running", status["epochs_completed"], status["epochs"], pid=999999)

    return setup


def remove(key: str, rel: str) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        target = env.path(key) / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return setup


def write_file(rel: str,
               data: Union[bytes, Callable[[CaseEnv], bytes]]) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        path = env.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data(env) if callable(data) else data)

    return setup


def symlink(rel: str, target: str) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        os.symlink(target, env.dir / rel)

    return setup


def make_fifo(rel: str) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        os.mkfifo(env.dir / rel)

    return setup


def make_null_device(rel: str) -> Callable[[CaseEnv], None]:
    """A character device node 1,3 (like /dev/null) inside the case folder (root only)."""

    def setup(env: CaseEnv) -> None:
        try:
            os.mknod(env.dir / rel, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError as exc:
            raise Skip(f"cannot make a device node: {exc}") from None

    return setup


def corrupt_folder(in_test_split: bool) -> Callable[[CaseEnv], None]:
    """The shapes folder data set plus one undecodable a/bad*.png in the chosen split."""

    def setup(env: CaseEnv) -> None:
        root = env.path("shapes")
        # bnn's own rule decides the split, so the bad image is where the case needs it.
        name = next(f"bad{i}.png" for i in range(1000)
                    if _in_test_split(f"a/bad{i}.png") == in_test_split)
        (root / "a" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x07garbage" * 40)
        env.facts["bad_image"] = name

    return setup


def names_bad_image(env: CaseEnv, run: Run):
    return says(env.facts["bad_image"])(env, run)


def fixture_bytes(rel: str) -> Callable[[CaseEnv], bytes]:
    return lambda env: (env.tour.fixtures / rel).read_bytes()


def tmpfs(rel: str, **kwargs) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        env.mount_tmpfs(rel, **kwargs)

    return setup


# ----------------------------------------------------------------------------------------------
# Section 9: self-contained runs and model files
# ----------------------------------------------------------------------------------------------


# A message about a damaged file says what is wrong in the file's terms, not Python's.
PYTHON_ERRORS = ("TypeError", "KeyError", "AttributeError", "IndexError", "ValueError")


def all_of(*checks: Check) -> Check:
    """The first verdict of `checks`, in order."""

    def check(env: CaseEnv, run: Run):
        for one in checks:
            verdict = one(env, run)
            if verdict:
                return verdict
        return None

    return check


def _sha(path: Union[str, Path]) -> Optional[str]:
    try:
        return file_sha256(Path(path))
    except OSError:
        return None


def frozen_sha(run_dir: Path, role: str) -> Optional[str]:
    """The sha256 of the run's own copy of input `role` (`run_inputs`), None without one."""
    copy = run_inputs.frozen(run_dir, role)
    if copy is None:
        return None
    return _sha(copy / MODEL_FILE if copy.is_dir() else copy)


def _outside(path: Optional[str], folder: Path) -> bool:
    return bool(path) and not Path(path).resolve().is_relative_to(folder.resolve())


def staged_run_from_own_files(rel: str) -> Check:
    """RUN_DIR is a finished staged run that every stage distilled from the teacher it started
    with (the fixture teacher.keras), each stage starting from the model.keras of RUN_DIR's
    own earlier stage, and whose last stage found its weights and teacher inside RUN_DIR."""

    def check(env: CaseEnv, run: Run):
        run_dir = env.dir / rel
        teacher = file_sha256(env.tour.fixtures / "teacher.keras")
        try:
            plan = StagedPlan.read(run_dir)
            records = [(stage, RunRecord.read(run_dir / stage.folder)) for stage in plan.stages]
        except BnnError as exc:
            return f"the staged run cannot be read: {exc}"
        missing = [name for name in FINAL_FILES if not (run_dir / name).is_file()]
        if plan.status != "finished" or missing:
            return f"{STAGES_FILE} says {plan.status!r}; final files missing: {missing}"
        kept = frozen_sha(run_dir, run_inputs.TEACHER)
        if kept is None:
            return "the staged run keeps no copy of its teacher"
        if kept != teacher:
            return ("data_lost", "the staged run's copy of its teacher is not the file it "
                                 "started with")
        folders = {stage.name: run_dir / stage.folder for stage in plan.stages}
        for stage, record in records:
            if record.teacher_sha256 != teacher:
                return (f"stage {stage.name}'s {CONFIG_FILE} records another teacher "
                        "(teacher_sha256): the replaced file was used")
            if frozen_sha(folders[stage.name], run_inputs.TEACHER) != teacher:
                return f"stage {stage.name}'s copy of its teacher is another file"
            if stage.start_from and record.weights_sha256 != _sha(
                    folders[stage.start_from] / MODEL_FILE):
                return (f"stage {stage.name} did not start from {rel}'s own "
                        f"{stage.start_from}/{MODEL_FILE} (weights_sha256)")
        last, record = records[-1]
        for what, path in (("weights", record.config.weights),
                           ("teacher", record.config.teacher)):
            if _outside(path, run_dir):
                return f"stage {last.name} took its {what} from {path}, outside {rel}"
        return None

    return check


def student_finished(rel: str) -> Check:
    """The student fixture resumed to its end, distilled throughout from its own copy of the
    teacher it started with (the tour's run as it was), whatever became of that run."""

    def check(env: CaseEnv, run: Run):
        done = env.tour.facts.get("student epochs done", 1)
        problem = finished_run(rel, STUDENT_EPOCHS,
                               session_epochs=STUDENT_EPOCHS - done)(env, run)
        if problem:
            return problem
        run_dir = env.dir / rel
        teacher = file_sha256(env.tour.fixtures / "run" / MODEL_FILE)
        try:
            recorded = RunRecord.read(run_dir).teacher_sha256
        except BnnError as exc:
            return f"{CONFIG_FILE} cannot be read: {exc}"
        if recorded != teacher:
            return f"{CONFIG_FILE} records another teacher (teacher_sha256)"
        if frozen_sha(run_dir, run_inputs.TEACHER) != teacher:
            return ("data_lost", "the student's copy of its teacher is not the teacher it "
                                 "started with")
        return None

    return check


def finite_losses(rel: str) -> Check:
    """A finished one-epoch run whose every loss (history.csv, metrics.json) is a number."""
    base = finished_run(rel, 1)

    def check(env: CaseEnv, run: Run):
        problem = base(env, run)
        if problem:
            return problem
        run_dir = env.dir / rel
        with open(run_dir / HISTORY_FILE, newline="") as f:
            values = [(key, value) for row in csv.DictReader(f) for key, value in row.items()
                      if "loss" in key]
        values.append(("test_loss", read_json(run_dir / METRICS_FILE).get("test_loss")))
        bad = [(key, value) for key, value in values
               if value in (None, "") or not math.isfinite(float(value))]
        return f"losses that are not finite: {bad[:3]}" if bad else None

    return check


def teacher_without_nan(env: CaseEnv) -> Run:
    """The case's training from a teacher: it trains (`Case.check` then wants finite losses)
    or refuses the teacher before the run folder exists, but never stops on a NaN loss."""
    run = env.run_command()
    if run.rc not in (0, None) and clean_error(run):
        message = first_message(run)
        if re.search(r"\bnan\b", message.lower()) or (env.dir / "run").exists():
            env.flag("refused", f"not a refusal before training: {message[:100]}")
    return run


def unverified_caveat(env: CaseEnv, run: Run):
    """The accuracy of a `.unverified` flatbuffer comes with a warning and a caveat."""
    warned = [line for line in run.stderr.splitlines()
              if line.startswith("Warning:") and "verification" in line]
    if not warned:
        return "no warning that the file failed its verification"
    return None if "unverified" in run.stdout else "the accuracy line has no caveat"


def bundle_checks_ok(rel: str) -> Check:
    def check(env: CaseEnv, run: Run):
        checked = env.bnn(["check-bundle", f"{{d}}/{rel}"])
        if checked.rc != 0:
            return f"check-bundle of the result: {first_message(checked)[:100]}"
        return None

    return check


def says_code_refused() -> Check:
    """The refusal names the file, its Lambda layer, and the option that would load it."""
    return says("{evil}", f"'{LAMBDA_LAYER}'", "lambda", "--trust-model-code")


def code_never_runs(env: CaseEnv) -> Run:
    """The case's command on a model file whose Lambda layer writes LAMBDA_MARKER when it
    runs: whatever the answer, a marker is code of a downloaded file run on load."""
    run = env.run_command()
    if (env.workdir() / LAMBDA_MARKER).exists():
        env.flag("silent_wrong", f"the model file's Lambda layer ran (it wrote {LAMBDA_MARKER})")
    return run


def paused(proc: Proc, variable: str) -> Callable[[], bool]:
    """Whether the child has reached bnn's test pause `variable` (its line on stderr)."""
    return lambda: variable in _read_text(proc.err_path)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    # The same inode: a hard link to the file would see the new bytes too.
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def teacher_replaced_between_stages(env: CaseEnv) -> Run:
    """The staged recipe distilled from teacher.keras, which is rewritten with another model
    while stage 1 pauses after its `fit`: stage 2 must still learn from the original."""
    proc = env.start_bnn(staged_args("{teacher}", "{d}/run"), {PAUSE_AFTER_FIT: "3"})
    if wait_until(proc, paused(proc, PAUSE_AFTER_FIT), 300, interval=0.05):
        _rewrite_in_place(env.path("teacher"),
                          (env.tour.fixtures / "other_teacher.keras").read_bytes())
        env.notes.append("teacher.keras rewritten while stage 1 paused after its fit")
    result = env.finish(proc, 300)
    if result.rc == 0 and _sha(env.path("teacher")) == _sha(env.tour.fixtures / "teacher.keras"):
        env.flag("skipped", "the staged run never paused, so its teacher was not replaced")
    return result


def teacher_extended_then_student(env: CaseEnv) -> Run:
    """`bnn train --resume TEACHER --epochs N` rewrites the teacher's model.keras; then the
    interrupted student resumes, still distilling from the teacher it started with."""
    teacher_model = env.dir / "distill" / "runs" / "teacher" / MODEL_FILE
    before = _sha(teacher_model)
    extended = env.bnn(["train", "--resume", "{d}/distill/runs/teacher", "--epochs", "3",
                        "--verbose", "0"], timeout=300)
    if extended.rc != 0:
        env.flag("refused", f"extending the teacher run: {first_message(extended)[:100]}")
    elif _sha(teacher_model) == before:
        env.flag("skipped", f"extending the teacher left its {MODEL_FILE} as it was")
    return env.bnn(["train", "--resume", "{d}/distill/runs/student", "--verbose", "0"],
                   timeout=300)


# How long `convert_while_training`'s trainer holds its run folder, paused before it finishes:
# two conversions of the tiny model must fit (~10 s each on 2 cores).
CONVERT_WINDOW_S = 60


def convert_while_training(env: CaseEnv) -> Run:
    """`bnn convert RUN` while `bnn train --resume RUN --epochs 3` owns RUN (paused before it
    finishes): a .tflite outside RUN is made with a warning naming the trainer, the default
    output inside RUN is refused, and the training still finishes."""
    env.passed_as = "ok"
    run_dir = env.path("run")
    trainer = env.start_bnn(["train", "--resume", "{run}", "--epochs", "3", "--verbose", "0"],
                            {PAUSE_BEFORE_FINISH: str(CONVERT_WINDOW_S)})
    if not wait_until(trainer, paused(trainer, PAUSE_BEFORE_FINISH), 300, interval=0.05):
        trained = env.finish(trainer, 300)
        env.flag("refused", f"the training never reached its pause: rc {trained.rc} "
                            f"{first_message(trained)[:80]}")
        return trained
    inside = env.bnn(["convert", "{run}"])
    outside = env.bnn(["convert", "{run}", "-o", "{d}/m.tflite"])
    overlapped = not trainer.poll()
    trained = env.finish(trainer, 300)
    env.notes.append(f"convert into the run: rc {inside.rc}; outside: rc {outside.rc}; "
                     f"train: rc {trained.rc}")
    if not overlapped:
        env.flag("skipped", "window missed: the training ended before both conversions ran")
        return outside
    pid = str(trainer.pid)
    if inside.rc == 0 or (run_dir / DEFAULT_OUTPUT).exists():
        env.flag("silent_wrong", f"wrote {DEFAULT_OUTPUT} into the run folder another process "
                                 "trains into")
    elif not clean_error(inside):
        env.flag("bad_message", f"into the run: rc {inside.rc} {first_message(inside)[:80]}")
    elif pid not in first_message(inside):
        env.flag("bad_message", "the refusal does not name the training process's PID")
    if outside.rc != 0:
        env.flag("refused", f"outside the run: {first_message(outside)[:100]}")
    else:
        warned = [line for line in outside.stderr.splitlines()
                  if line.startswith("Warning:") and pid in line]
        if not warned:
            env.flag("silent_wrong", "converted a run being trained without a warning naming "
                                     "the training process")
        problem = is_tflite("m.tflite")(env, outside)
        if problem:
            env.flag("silent_wrong", problem)
    if trained.rc != 0:
        env.flag("data_lost", f"the training failed: {first_message(trained)[:100]}")
    else:
        problem = finished_run("run", 3)(env, trained)
        if problem:
            env.flag(*(problem if isinstance(problem, tuple) else ("data_lost", problem)))
    return outside


def copy_tree(source: str, dest: str) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        shutil.copytree(env.dir / source, env.dir / dest, symlinks=True)

    return setup


def move(source: str, dest: str) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        (env.dir / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(env.dir / source), str(env.dir / dest))

    return setup


def edit_text(rel: str, edit: Callable[[str], str]) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        path = env.dir / rel
        edited = edit(path.read_text())
        assert edited != path.read_text(), f"the edit of {rel} changed nothing"
        path.write_text(edited)

    return setup


def edit_json(rel: str, edit: Callable[[Any], None]) -> Callable[[CaseEnv], None]:
    def change(text: str) -> str:
        value = json.loads(text)
        edit(value)
        return json.dumps(value, indent=2)

    return edit_text(rel, change)


def small_tmpfs_for_the_tflite(env: CaseEnv) -> None:
    """A tmpfs with a little more free space than the run's .tflite takes (its estimate is
    within 5% of it, plus a margin and 16 KiB): far less than its model.keras."""
    size = (env.tour.fixtures / "model.tflite").stat().st_size
    env.mount_tmpfs("small", size="4m", leave_free=int(size * 1.3) + 32 * 1024)


# ----------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------

# What a training or resume may rewrite in its run folder. flips.csv and flips.png are
# SignFlipTracker's names (no constant of bnn's holds them). The best epoch's weights
# (best/) and the other epoch's model file change as a later epoch becomes the best.
RUN_PROGRESS_FILES = (f"*/{STATUS_FILE}", f"*/{HISTORY_FILE}", "*/flips.csv", "*/flips.png",
                      f"*/{BACKUP_DIR}*", f"*/{METRICS_FILE}", f"*/{MODEL_FILE}",
                      f"*/{CONFIG_FILE}", f"*/{BEST_DIR}/*", f"*/{BEST_MODEL_FILE}",
                      f"*/{LAST_MODEL_FILE}")


def build_cases() -> List[Case]:
    """Every case of the tour, in the issue's section order."""
    cases: List[Case] = []

    def add(name: str, section: str, args: Sequence[str] = (), **kw) -> None:
        cases.append(Case(name=name, section=section, args=list(args), **kw))

    # Whole-case allowances (`Case.max_seconds`): a train, its signal and --resume with the
    # summary check; two trains and their checks; a resume and the summary check.
    two_trains_s = 800
    resume_check_s = 540

    # 1. Signals at each phase of a run, then --resume ------------------------------------------
    s1 = "1 signals"
    for phase in SIGNAL_PHASES:
        for sig_name, signum in (("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)):
            if (sig_name, phase) == ("sigterm", "pause_before_finish"):
                continue  # a unit test covers it (see test_fault_tour.py's list)
            extra = {"BNN_TEST_PAUSE_BEFORE_FINISH": "3"} if phase == "pause_before_finish" else {}
            add(f"{sig_name}_{phase}", s1, expect="custom", run=signal_runner(phase, signum),
                env=extra, timeout=300, budget=400, max_seconds=two_trains_s)

    # 2. Outputs never destroy inputs -------------------------------------------------------------
    s2 = "2 outputs"
    before_work = dict(budget=BEFORE_WORK_BUDGET_S)
    add("convert_onto_own_input", s2,
        ["convert", f"{{run}}/{MODEL_FILE}", "-o", f"{{run}}/{MODEL_FILE}"], **before_work)
    add("convert_symlink_to_input", s2, ["convert", "{run}", "-o", "{d}/out.tflite"],
        setup=then(uses("run"), symlink("out.tflite", f"run/{MODEL_FILE}")), **before_work)
    add("convert_symlink_to_new_file", s2, ["convert", "{run}", "-o", "{d}/link.tflite"],
        expect="either", setup=then(uses("run"), write_file("real/.keep", b""),
                                    symlink("link.tflite", "real/new.tflite")),
        check=lambda env, run: None if (env.dir / "link.tflite").is_symlink() and is_tflite(
            "real/new.tflite")(env, run) is None else ("data_lost", "the symlink was replaced"))
    add("convert_onto_fifo", s2, ["convert", "{run}", "-o", "{d}/pipe.tflite"],
        setup=then(uses("run"), make_fifo("pipe.tflite")), timeout=120, **before_work)
    add("convert_onto_device_node", s2, ["convert", "{run}", "-o", "{d}/null.tflite"],
        setup=then(uses("run"), make_null_device("null.tflite")), **before_work)
    add("convert_symlink_to_device_node", s2, ["convert", "{run}", "-o", "{d}/dev.tflite"],
        setup=then(uses("run"), make_null_device("nulldev"), symlink("dev.tflite", "nulldev")),
        **before_work)
    add("convert_existing_output", s2, ["convert", "{run}", "-o", "{d}/old.tflite"],
        setup=then(uses("run"), write_file("old.tflite", fixture_bytes("float.tflite"))),
        **before_work)
    add("convert_default_output_exists", s2, ["convert", "{run}"],
        setup=then(uses("run"), write_file(f"run/{DEFAULT_OUTPUT}", fixture_bytes("float.tflite"))),
        **before_work)
    add("convert_output_is_dir", s2, ["convert", "{run}", "-o", "{empty}"])
    add("convert_output_new_parent", s2, ["convert", "{run}", "-o", "{d}/new/sub/m.tflite"],
        expect="either", check=is_tflite("new/sub/m.tflite"))

    # 3. One writer per run folder ----------------------------------------------------------------
    s3 = "3 one writer"
    writers = dict(expect="custom", timeout=400, budget=400, max_seconds=two_trains_s)
    add("two_trains_together", s3, run=two_writers_runner(0.0), **writers)
    add("two_trains_3s_apart", s3, run=two_writers_runner(3.0), **writers)
    add("two_trains_second_while_first_runs", s3, run=two_writers_runner(None), **writers)
    add("resume_while_training", s3, run=resume_while_training, **writers)

    # 4. Output locations checked before the long work --------------------------------------------
    s4 = "4 before work"
    add("convert_refused_bundle", s4,
        ["convert", "{run}", "-o", "{d}/good.tflite", "--bundle", "{bundle}"],
        setup=then(uses("run", "bundle"), write_file("good.tflite", fixture_bytes("float.tflite"))),
        **before_work)
    add("convert_refused_bundle_new_output", s4,
        ["convert", "{run}", "-o", "{d}/new.tflite", "--bundle", "{bundle}"],
        check=nothing_written("new.tflite"), **before_work)
    add("convert_readonly_existing_output", s4, ["convert", "{run}", "-o", "{d}/ro/old.tflite"],
        setup=lambda env: env.mount_tmpfs(
            "ro", files={"old.tflite": fixture_bytes("float.tflite")(env)}, readonly=True),
        **before_work)
    add("convert_full_disk_output", s4, ["convert", "{run}", "-o", "{d}/full/model.tflite"],
        setup=tmpfs("full", leave_free=8192), budget=60)
    add("train_readonly_output", s4, train_args(1, 2, out="{d}/ro/run"),
        setup=tmpfs("ro", readonly=True), **before_work)
    add("train_full_disk_output", s4, train_args(1, 2, out="{d}/full/run"),
        setup=tmpfs("full", size="64k"), budget=60)

    # 5. --resume states its terms ----------------------------------------------------------------
    s5 = "5 resume"
    resumable = dict(may_change=RUN_PROGRESS_FILES, timeout=300, max_seconds=resume_check_s)
    refused_resume = dict(timeout=300, max_seconds=360)
    add("resume_other_model", s5,
        ["train", "binarynet", "--resume", "{interrupted}", "--verbose", "0"],
        check=says(any_of=("binarynet", "quicknet")), **resumable)
    add("resume_other_model_and_epochs", s5,
        ["train", "binarynet", "--resume", "{interrupted}", "--epochs", "2", "--verbose", "0"],
        check=says(any_of=("binarynet", "quicknet")), **resumable)
    add("resume_other_batch_size", s5,
        ["train", "--resume", "{interrupted}", "--batch-size", "16", "--verbose", "0"],
        check=says(any_of=("batch",)), **resumable)
    add("resume_other_dataset", s5,
        ["train", "--resume", "{interrupted}", "--dataset", "mnist", "--verbose", "0"],
        check=says(any_of=("dataset", "data set")), **resumable)
    add("resume_interrupted", s5, ["train", "--resume", "{interrupted}", "--verbose", "0"],
        expect="ok", check=finished_run("interrupted", 3, session_epochs=2), **resumable)
    add("resume_same_model_named", s5,
        ["train", "quicknet", "--resume", "{interrupted}", "--verbose", "0"],
        expect="ok", check=finished_run("interrupted", 3), **resumable)
    add("resume_extend_interrupted", s5,
        ["train", "--resume", "{interrupted}", "--epochs", "4", "--verbose", "0"],
        expect="ok", check=finished_run("interrupted", 4, session_epochs=3, config_epochs=4),
        **resumable)
    add("resume_extend_finished", s5,
        ["train", "--resume", "{run}", "--epochs", "3", "--verbose", "0"],
        expect="ok", check=finished_run("run", 3, config_epochs=3), **resumable)
    add("resume_stale_running_status", s5, ["train", "--resume", "{interrupted}", "--verbose", "0"],
        setup=stale_running_status("interrupted"),
        expect="ok", check=finished_run("interrupted", 3), **resumable)
    add("resume_finished", s5, ["train", "--resume", "{run}", "--verbose", "0"],
        check=says("finish"), **refused_resume)
    add("resume_finished_status_running", s5, ["train", "--resume", "{run}", "--verbose", "0"],
        setup=stale_running_status("run"), check=says("finish"), **refused_resume)
    add("resume_no_backup", s5, ["train", "--resume", "{interrupted}", "--verbose", "0"],
        setup=remove("interrupted", BACKUP_DIR), expect="either",
        check=finished_run("interrupted", 3), **resumable)
    add("resume_empty_folder", s5, ["train", "--resume", "{empty}"])
    add("resume_corrupt_config", s5, ["train", "--resume", "{interrupted}", "--verbose", "0"],
        setup=then(uses("interrupted"),
                   write_file(f"interrupted/{CONFIG_FILE}", b"{\"model\": ")),
        check=says(CONFIG_FILE))

    # 6. No silent wrong success -------------------------------------------------------------
    s6 = "6 silent wrong"
    add("evaluate_other_classes", s6, ["evaluate", "{tflite}", "--dataset", "folder:{shapes}"],
        check=says(any_of=("class",)))
    add("evaluate_same_classes_folder", s6,
        ["evaluate", "{tflite}", "--dataset", "folder:{digitsfolder}"],
        expect="ok", check=stdout_has("test accuracy"))
    flips = 24
    for i in range(flips):
        add(f"bitflip_{i:02d}", s6, expect="either", run=bitflip_runner(i, flips))

    # 7. Messages --------------------------------------------------------------------------------
    s7 = "7 messages"
    ranges = [("epochs", "0", ("epochs",)), ("batch-size", "0", ("batch",)),
              ("lr", "0", ("learning", "lr")), ("float-lr", "0", ("float",)),
              ("steps-per-epoch", "0", ("steps",)), ("image-size", "2", ("image",)),
              ("validation-freq", "0", ("validation",)), ("bases", "0", ("bases",)),
              ("label-smoothing", "1.5", ("smoothing",)), ("weight-decay", "-1", ("decay",))]
    for option, value, names in ranges:
        not_ = () if option == "image-size" else ("image_size",)
        add(f"train_range_{option.replace('-', '_')}_{value.replace('-', 'neg')}", s7,
            train_args(1, 2, f"--{option}", value), check=says(any_of=names, not_=not_),
            timeout=240)
    add("train_model_option_no_equals", s7, train_args(1, 2, "--model-option", "section_filters"))
    add("train_model_option_unknown_key", s7, train_args(1, 2, "--model-option", "nope=1"),
        check=says("nope"))
    for command in ("summary", "inspect"):
        add(f"{command}_input_shape_1_1_1", s7, [command, "quicknet", "--input-shape", "1,1,1"],
            check=says(any_of=("shape", "input")))
    add("models_input_shape_1_1_1", s7, ["models", "quick*", "--input-shape", "1,1,1"],
        check=says(any_of=("shape", "input")))
    add("train_folder_corrupt_image", s7, train_args(1, 2, "--dataset", "folder:{shapes}"),
        setup=corrupt_folder(in_test_split=False), check=names_bad_image, timeout=240)
    add("evaluate_folder_corrupt_image", s7,
        ["evaluate", "{tflite}", "--dataset", "folder:{shapes}"],
        setup=corrupt_folder(in_test_split=True), check=names_bad_image)
    offline = dict(budget=OFFLINE_BUDGET_S, timeout=OFFLINE_TIMEOUT_S, max_seconds=400)
    add("offline_train_cifar10_default", s7,
        ["train", "binary-densenet28", "--epochs", "1", "--steps-per-epoch", "1", "--verbose", "0",
         "-o", "{d}/run"], check=says(any_of=("download", "internet", "network", "offline")),
        **offline)
    add("offline_evaluate_mnist", s7, ["evaluate", "{tflite}", "--dataset", "mnist"],
        check=says(any_of=("download", "internet", "network", "offline")), **offline)
    add("predict_pixel_bomb_12000x12000", s7, expect="either", run=pixel_bomb,
        timeout=300, budget=60, max_seconds=400)

    # 8. What a new user gets wrong, command by command --------------------------------------
    s8 = "8 new user"
    add("unknown_command", s8, ["trian", "quicknet"])
    # train
    add("train_no_model", s8, ["train", "--dataset", "digits"])
    add("train_unknown_model", s8, train_args(1, 2)[:1] + ["quiknet"] + train_args(1, 2)[2:],
        check=says("quiknet"))
    add("train_unknown_dataset", s8, train_args(1, 2, "--dataset", "cifar11"),
        check=says("cifar11"))
    add("train_folder_missing", s8, train_args(1, 2, "--dataset", "folder:{nope}"),
        check=says("{nope}"))
    add("train_folder_empty", s8, train_args(1, 2, "--dataset", "folder:{empty}"))
    add("train_folder_one_class", s8, train_args(1, 2, "--dataset", "folder:{d}/one"),
        setup=lambda env: write_image_folder(env.dir / "one", ["a"], 12), check=says("class"))
    add("train_output_not_empty", s8, train_args(1, 2, out="{run}"), check=says("{run}"))
    add("train_bad_precision", s8, train_args(1, 2, "--precision", "fp16"))
    add("train_folder_dataset_ok", s8, train_args(1, 3, "--dataset", "folder:{shapes}"),
        expect="ok", check=finished_run("run", 1), timeout=300, max_seconds=resume_check_s)
    # convert
    add("convert_missing_source", s8, ["convert", "{nope}"], check=says("{nope}"))
    add("convert_txt_as_model", s8, ["convert", "{txt}"])
    add("convert_empty_keras", s8, ["convert", "{empty_keras}"])
    add("convert_truncated_keras", s8, ["convert", "{trunc_keras}"])
    add("convert_tflite_as_model", s8, ["convert", "{tflite}"])
    add("convert_folder_without_model", s8, ["convert", "{empty}"])
    add("convert_corrupt_run_config", s8, ["convert", "{run}", "-o", "{d}/m.tflite"],
        setup=then(uses("run"), write_file(f"run/{CONFIG_FILE}", b"{\"dataset\": ")),
        check=says(CONFIG_FILE))
    add("convert_bad_target", s8, ["convert", "{run}", "--target", "x86"])
    add("convert_samples_0", s8, ["convert", "{run}", "--samples", "0", "-o", "{d}/m.tflite"],
        check=says("sample"), budget=60)
    add("convert_int8_io_without_int8", s8, ["convert", "{run}", "--int8-io", "-o", "{d}/m.tflite"],
        check=says("int8"))
    add("convert_inputs_txt", s8, ["convert", "{model}", "--inputs", "{txt}", "-o", "{d}/m.tflite"],
        check=says("inputs"), budget=60)
    add("convert_inputs_wrong_shape", s8,
        ["convert", "{model}", "--inputs", "{npy_bad}", "-o", "{d}/m.tflite"], check=says("shape"),
        budget=60)
    add("convert_output_without_suffix", s8, ["convert", "{run}", "-o", "{d}/model.bin"],
        expect="ok", check=is_tflite("model.bin"), timeout=300, max_seconds=360)
    # evaluate
    add("evaluate_missing_file", s8, ["evaluate", "{nope}"], check=says("{nope}"))
    add("evaluate_txt", s8, ["evaluate", "{txt}"])
    add("evaluate_keras_as_tflite", s8, ["evaluate", "{model}"])
    add("evaluate_empty_file", s8, ["evaluate", "{empty_tflite}"])
    add("evaluate_truncated_tflite", s8, ["evaluate", "{trunc_tflite}"])
    add("evaluate_unknown_dataset", s8, ["evaluate", "{tflite}", "--dataset", "cifar11"],
        check=says("cifar11"))
    add("evaluate_limit_0", s8, ["evaluate", "{tflite}", "--limit", "0"], check=says("limit"))
    add("evaluate_no_metadata", s8, ["evaluate", "{float}"], check=says("metadata"))
    add("evaluate_ok", s8, ["evaluate", "{tflite}", "--limit", "50"], expect="ok",
        check=stdout_has("test accuracy"))
    # predict
    add("predict_missing_tflite", s8, ["predict", "{nope}", "{img}"], check=says("{nope}"))
    add("predict_missing_image", s8, ["predict", "{tflite}", "{d}/nope.png"])
    add("predict_txt_image", s8, ["predict", "{tflite}", "{txt}"], check=says("{txt}"))
    add("predict_empty_image", s8, ["predict", "{tflite}", "{empty_png}"],
        check=says("{empty_png}"))
    add("predict_truncated_png", s8, ["predict", "{tflite}", "{trunc_png}"],
        check=says("{trunc_png}"))
    add("predict_folder_as_image", s8, ["predict", "{tflite}", "{empty}"])
    add("predict_top_k_0", s8, ["predict", "{tflite}", "{img}", "--top-k", "0"], check=says("top"))
    add("predict_no_metadata", s8, ["predict", "{float}", "{img}"], check=says("metadata"))
    add("predict_ok", s8, ["predict", "{tflite}", "{img}"], expect="ok",
        check=stdout_has("digit.png"))
    add("predict_rgb_into_gray_model", s8, ["predict", "{tflite}", "{rgb}"], expect="ok",
        check=stdout_has("rgb.png"))
    add("predict_bmp", s8, ["predict", "{tflite}", "{bmp}"], expect="ok",
        check=stdout_has("digit.bmp"))
    add("predict_json", s8, ["predict", "{tflite}", "{img}", "--json"], expect="ok",
        check=valid_json_output)
    # benchmark
    add("benchmark_missing_file", s8, ["benchmark", "{nope}"], check=says("{nope}"))
    add("benchmark_runs_0", s8, ["benchmark", "{tflite}", "--runs", "0"], check=says("runs"))
    add("benchmark_compare_float_missing", s8,
        ["benchmark", "{tflite}", "--runs", "3", "--compare-float", "{nope}"], check=says("{nope}"))
    add("benchmark_ok", s8, ["benchmark", "{tflite}", "--runs", "5"], expect="ok",
        check=stdout_has("median"))
    add("benchmark_compare_float_run", s8,
        ["benchmark", "{tflite}", "--runs", "5", "--compare-float", "{run}"], expect="ok",
        check=stdout_has("float"), timeout=300, max_seconds=360)
    # models
    add("models_ok", s8, ["models", "quick*", "--input-shape", "32,32,3", "--num-classes", "10"],
        expect="ok", check=stdout_has("quicknet"))
    add("models_no_match", s8, ["models", "zzz*"], check=says("zzz"))
    add("models_input_shape_two_dims", s8, ["models", "quick*", "--input-shape", "32,32"],
        check=says("input-shape"))
    add("models_num_classes_negative", s8, ["models", "quick*", "--num-classes", "-5"],
        check=says("class"))
    # summary
    add("summary_registry_ok", s8, ["summary", "quicknet", "--input-shape", "32,32,3",
                                    "--num-classes", "10"], expect="ok")
    add("summary_run_ok", s8, ["summary", "{run}"], expect="ok")
    add("summary_unknown_model", s8, ["summary", "quiknet"], check=says("quiknet"))
    add("summary_missing_keras", s8, ["summary", "{d}/nope.keras"], check=says("nope.keras"))
    add("summary_txt", s8, ["summary", "{txt}"])
    add("summary_input_shape_zero", s8, ["summary", "quicknet", "--input-shape", "0,32,3"],
        check=says("input-shape"))
    # inspect
    add("inspect_run_ok", s8, ["inspect", "{run}"], expect="ok")
    add("inspect_bad_target", s8, ["inspect", "quicknet", "--target", "gpu"])
    add("inspect_unknown_model", s8, ["inspect", "quiknet"], check=says("quiknet"))
    add("inspect_truncated_keras", s8, ["inspect", "{trunc_keras}"])
    # check-bundle
    add("check_bundle_ok", s8, ["check-bundle", "{bundle}"], expect="ok", check=stdout_has("OK"))
    add("check_bundle_missing", s8, ["check-bundle", "{nope}"], check=says("{nope}"))
    add("check_bundle_empty_folder", s8, ["check-bundle", "{empty}"])
    add("check_bundle_missing_model", s8, ["check-bundle", "{bundle}"],
        setup=remove("bundle", TFLITE_FILE), check=says(TFLITE_FILE))
    add("check_bundle_bad_model_json", s8, ["check-bundle", "{bundle}"],
        setup=then(uses("bundle"), write_file(f"pi/{MODEL_JSON}", b"{")), check=says(MODEL_JSON))
    add("check_bundle_truncated_expected_output", s8, ["check-bundle", "{bundle}"],
        setup=lambda env: (env.path("bundle") / EXPECTED_OUTPUT_FILE).write_bytes(b"\x00" * 6),
        check=says("expected"))
    add("check_bundle_labels_mismatch", s8, ["check-bundle", "{bundle}"],
        setup=lambda env: (env.path("bundle") / LABELS_FILE).write_text("a\nb\n"),
        check=says("labels"))
    add("check_bundle_flipped_model", s8, ["check-bundle", "{bundle}"], expect="either",
        setup=lambda env: (env.path("bundle") / TFLITE_FILE).write_bytes(flip_bit(
            (env.tour.fixtures / "model.tflite").read_bytes(),
            (env.tour.fixtures / "model.tflite").stat().st_size // 2, 6)))

    # 9. Self-contained runs and model files ------------------------------------------------------
    s9 = "9 self-contained"
    staged = dict(timeout=300, max_seconds=resume_check_s)
    # Staged runs keep their own teacher and stage models, wherever the folder goes.
    add("staged_teacher_replaced_between_stages", s9, expect="ok", setup=uses("teacher"),
        run=teacher_replaced_between_stages, check=staged_run_from_own_files("run"),
        may_change=("teacher.keras",), **staged)
    add("staged_copy_of_interrupted_resumes", s9,
        ["train", "--resume", "{d}/copy", "--verbose", "0"], expect="ok",
        setup=then(uses("staged"), copy_tree("staged/run", "copy")),
        check=staged_run_from_own_files("copy"), may_change=("copy/*",), **staged)
    add("staged_moved_resumes", s9, ["train", "--resume", "run", "--verbose", "0"],
        cwd="elsewhere", expect="ok",
        setup=then(uses("staged"), move("staged/run", "elsewhere/run"),
                   remove("staged", "teacher.keras")),
        check=staged_run_from_own_files("elsewhere/run"), may_change=("elsewhere/run/*",),
        **staged)
    # A student keeps its own copy of its teacher.
    student = dict(expect="ok", setup=uses("distill"),
                   check=student_finished("distill/runs/student"), may_change=RUN_PROGRESS_FILES,
                   timeout=300, max_seconds=resume_check_s)
    add("student_relative_teacher_resumes_elsewhere", s9,
        ["train", "--resume", "../distill/runs/student", "--verbose", "0"], cwd="elsewhere",
        **student)
    add("student_resume_with_absolute_teacher", s9,
        ["train", "--resume", "{d}/distill/runs/student", "--teacher", "{d}/distill/runs/teacher",
         "--verbose", "0"], **student)
    add("student_resumes_after_teacher_extended", s9, run=teacher_extended_then_student,
        **student)
    # Bundles: every file the device reads is checked; --overwrite keeps the user's files.
    add("check_bundle_edited_runner_args", s9, ["check-bundle", "{bundle}"],
        setup=then(uses("bundle"), edit_text(f"pi/{RUNNER_ARGS_FILE}", lambda text: re.sub(
            r"^--mean=.*$", "--mean=123.0", text, flags=re.M))),
        check=says(RUNNER_ARGS_FILE, "--mean=123.0"))
    for script in SCRIPTS:
        add(f"check_bundle_edited_{Path(script).stem}", s9, ["check-bundle", "{bundle}"],
            setup=then(uses("bundle"), edit_text(f"pi/{script}", lambda text: text + "echo hi\n")),
            check=says(script))
    add("check_bundle_reordered_labels", s9, ["check-bundle", "{bundle}"],
        setup=then(uses("bundle"), edit_text(f"pi/{LABELS_FILE}", lambda text: "\n".join(
            reversed(text.splitlines())) + "\n")),
        check=says(LABELS_FILE))
    add("check_bundle_edited_model_json", s9, ["check-bundle", "{bundle}"],
        setup=then(uses("bundle"), edit_json(f"pi/{MODEL_JSON}", lambda meta: meta.update(
            pixel_max=float(meta["pixel_max"]) + 1))),
        check=says(MODEL_JSON))
    add("convert_bundle_overwrite_keeps_user_files", s9,
        ["convert", "{run}", "-o", "{d}/m.tflite", "--bundle", "{bundle}", "--overwrite"],
        expect="ok", setup=then(uses("run", "bundle"),
                                write_file("pi/notes.txt", b"flashed to pi-3 on monday\n"),
                                write_file("pi/build/bnn_runner", b"\x7fELF built on the pi"),
                                symlink("pi/build/runner", "bnn_runner")),
        check=all_of(is_tflite("m.tflite"), bundle_checks_ok("pi")),
        may_change=tuple(f"pi/{name}" for name in BUNDLE_FILES), timeout=300, max_seconds=400)
    # Damaged and foreign files: one line naming the file (and what does not fit).
    for name, key in (("random_bytes", "random_h5"), ("truncated_h5", "trunc_h5"),
                      ("truncated_keras", "trunc_keras")):
        add(f"train_weights_{name}", s9, train_args(1, 2, "--weights", f"{{{key}}}"),
            setup=uses(key), check=all_of(says(f"{{{key}}}"), nothing_written("run")))
    add("train_weights_foreign", s9, train_args(1, 2, "--weights", "{foreign}"),
        setup=uses("foreign"),
        check=all_of(says("{foreign}", FOREIGN_LAYER), nothing_written("run")))
    for name, damage in (("no_stages", lambda plan: plan.update(stages=[])),
                         ("stage_not_an_object", lambda plan: plan["stages"].__setitem__(1, 5))):
        add(f"resume_staged_{name}", s9, ["train", "--resume", "{d}/staged/run"],
            setup=then(uses("staged"), edit_json(f"staged/run/{STAGES_FILE}", damage)),
            check=says(STAGES_FILE, not_=PYTHON_ERRORS))
    add("summary_unregistered_layer_class", s9, ["summary", "{custom}"],
        check=says(UNREGISTERED_CLASS))
    add("convert_unregistered_layer_class", s9,
        ["convert", "{custom}", "--no-metadata", "-o", "{d}/m.tflite"],
        check=all_of(says(UNREGISTERED_CLASS), nothing_written("m.tflite")), **before_work)
    add("custom_objects_sys_exit", s9, ["summary", "{model}", "--custom-objects", "{d}/exits.py"],
        setup=then(uses("model"), write_file("exits.py", b"import sys\nsys.exit(3)\n")),
        check=says("exits.py", "sys.exit(3)"))
    add("train_teacher_outputs_logits", s9, train_args(1, 2, "--teacher", "{logits}"),
        expect="either", setup=uses("logits"), run=teacher_without_nan,
        check=finite_losses("run"), timeout=300,
        max_seconds=resume_check_s)
    for option, value in (("distill-temperature", "inf"), ("distill-temperature", "nan"),
                          ("distill-weight", "0")):
        add(f"train_{option.replace('-', '_')}_{value}", s9,
            train_args(1, 2, "--teacher", "{teacher}", f"--{option}", value), setup=uses("teacher"),
            check=all_of(says(f"--{option}"), nothing_written("run")))
    # The benchmark script refuses a bad argument before it measures or writes anything.
    benchmark_script = dict(program=FASHION_MNIST, setup=uses("fashion"))
    script_base = ["--data-dir", "{fashion}", "--output", "{d}/out",
                   "--default-images-per-s", "184"]
    for name, argv, named in (
            ("budget_0", ["--budget", "0"], "--budget"),
            ("budget_nan", ["--budget", "nan"], "--budget"),
            ("seeds_not_integers", ["--seeds", "a,b"], "--seeds"),
            ("rows_empty", ["--rows", ""], "--rows"),
            ("kd_row_without_teacher", ["--rows", "quicknet-s2-kd"], "--teacher"),
            ("teacher_missing", ["--rows", "quicknet-s2-kd", "--teacher", "{nope}"], "{nope}")):
        add(f"fashion_mnist_{name}", s9, [*script_base, *argv],
            check=all_of(says(named), nothing_written("out")), **benchmark_script)
    # Model files are data: one that carries code is refused by every reader, and never runs.
    add("inspect_lambda_h5", s9, ["inspect", "{evil}"], setup=uses("evil"), run=code_never_runs,
        check=says_code_refused())
    add("summary_lambda_h5", s9, ["summary", "{evil}"], setup=uses("evil"), run=code_never_runs,
        check=says_code_refused())
    add("convert_lambda_h5", s9, ["convert", "{evil}", "--no-metadata", "-o", "{d}/m.tflite"],
        setup=uses("evil"), run=code_never_runs,
        check=all_of(says_code_refused(), nothing_written("m.tflite")))
    add("train_teacher_lambda_h5", s9, train_args(1, 2, "--teacher", "{evil}"), setup=uses("evil"),
        run=code_never_runs, check=all_of(says_code_refused(), nothing_written("run")))
    # Smaller: a caveat, a run folder in use, a free-space estimate.
    add("evaluate_unverified_caveat", s9,
        ["evaluate", f"{{d}}/model.tflite{UNVERIFIED_SUFFIX}", "--limit", "50"], expect="ok",
        setup=write_file(f"model.tflite{UNVERIFIED_SUFFIX}", fixture_bytes("model.tflite")),
        check=unverified_caveat)
    add("convert_while_training", s9, expect="custom", setup=uses("run"),
        run=convert_while_training, may_change=RUN_PROGRESS_FILES, timeout=300, max_seconds=500)
    add("convert_onto_small_tmpfs", s9, ["convert", "{run}", "-o", "{d}/small/model.tflite"],
        expect="ok", setup=then(uses("run"), small_tmpfs_for_the_tflite),
        check=is_tflite("small/model.tflite"), timeout=300, max_seconds=360)
    return cases


# ----------------------------------------------------------------------------------------------
# Running a case
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What a case came to.

    Attributes:
        category: One of the module docstring's categories.
        note: The reason for the category, then the notes the case took.
        command: The main command, as a user would type it.
        rc: Its exit code (None: killed at the timeout).
        seconds: Its wall time.
        first_stderr: Its `Error:` line, else the first message line of its stderr.
        flags: Every (category, reason) raised; the category is the worst of them.
    """

    category: str
    note: str
    command: str
    rc: Optional[int]
    seconds: float
    first_stderr: str
    flags: List[Tuple[str, str]]


def classify(case: Case, env: CaseEnv, main: Run,
             lost: List[str]) -> Tuple[str, List[Tuple[str, str]]]:
    """The case's category and every flag raised (see the module docstring)."""
    flags = list(env.flags)
    if any(cat == "skipped" for cat, _ in flags):
        return "skipped", flags
    if any(step.rc is None for step in env.steps):
        flags.append(("hang", f"killed after {case.timeout:.0f} s"))
    if lost:
        flags.append(("data_lost", "; ".join(lost[:3])))
    for step in env.steps:
        if is_crash(step) and id(step) not in env.signalled:
            flags.append(("crash", f"rc {step.rc}: {first_message(step)[:80]}"))
        if has_traceback(step):
            flags.append(("traceback", first_message(step)[:100]))
        if "Internal error" in step.stderr:
            flags.append(("internal", first_message(step)[:100]))
    if case.expect in ("error", "either") and main.rc is not None and main.rc != 0:
        if main.rc == EXIT_INTERNAL_ERROR and "Internal error" not in main.stderr:
            flags.append(("internal", f"exit 1: {first_message(main)[:80]}"))
        elif main.rc == EXIT_USER_ERROR and not clean_error(main, case.error_prefix):
            count = len(message_lines(main.stderr))
            flags.append(("bad_message", f"not one 'Error:' line ({count} lines)"))
        elif main.rc not in (EXIT_INTERNAL_ERROR, EXIT_USER_ERROR) and not is_crash(main):
            flags.append(("bad_message", f"exit code {main.rc}"))
        if case.check and case.expect == "error" and main.rc == EXIT_USER_ERROR:
            verdict = case.check(env, main)
            if verdict:
                flags.append(verdict if isinstance(verdict, tuple) else ("bad_message", verdict))
    if case.expect == "error" and main.rc == 0:
        flags.append(("silent_wrong", "exit 0 where an error was expected"))
    if case.expect in ("ok", "either") and main.rc == 0 and case.check:
        verdict = case.check(env, main)
        if verdict:
            flags.append(verdict if isinstance(verdict, tuple) else ("silent_wrong", verdict))
    if case.expect == "ok" and main.rc not in (0, None) and not is_crash(main):
        if clean_error(main, case.error_prefix):
            flags.append(("refused", first_message(main, prefix=case.error_prefix)[:100]))
        elif "Internal error" not in main.stderr and not has_traceback(main):
            flags.append(("refused", f"exit {main.rc}: {first_message(main)[:80]}"))
    if main.seconds > case.time_budget() and main.rc is not None:
        flags.append(("slow", f"{main.seconds:.1f} s > {case.time_budget():.0f} s"))
    for category in PRECEDENCE:
        if any(cat == category for cat, _ in flags):
            return category, flags
    if env.passed_as:
        return env.passed_as, flags
    if case.expect == "error" or (case.expect in ("either", "custom") and main.rc not in (0, None)):
        return "clean", flags
    return "ok", flags


def execute(tour: Tour, case: Case) -> Outcome:
    """Runs `case` in a new folder under `tour.workdir` and classifies what it got back.

    Children still running at the end are killed and tmpfs mounts unmounted, whatever happens;
    an exception of the harness itself propagates (it is a bug of the tour, not of bnn).
    """
    env = CaseEnv(tour, case)
    env.dir.mkdir(parents=True)
    env.logs.mkdir(parents=True, exist_ok=True)
    args: List[str] = []
    try:
        if case.setup:
            case.setup(env)
        args = env.expand(case.args)
        before = snapshot(env.dir)
        main = case.run(env) if case.run else env.run_command()
        lost = lost_entries(before, snapshot(env.dir), case.may_change)
        category, flags = classify(case, env, main, lost)
    except Skip as exc:
        return Outcome("skipped", str(exc), shlex.join([case.shown, *args]), None, 0.0, "",
                       [("skipped", str(exc))])
    finally:
        env.kill_all()
        env.unmount_all()
    reason = next((r for c, r in flags if c == category), "")
    return Outcome(
        category=category,
        note="; ".join(x for x in [reason, *env.notes] if x),
        command=shlex.join([case.shown, *args]) if args else main.command,
        rc=main.rc,
        seconds=round(main.seconds, 2),
        first_stderr=first_message(main, stdout_too=False, prefix=case.error_prefix),
        flags=flags,
    )


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------

FLOAT_TFLITE_CODE = r"""
import sys
import numpy as np
import tensorflow as tf
rng = np.random.default_rng(0)
kernel = tf.constant(rng.standard_normal((3, 3, 1, 8)).astype(np.float32))
dense = tf.constant(rng.standard_normal((8, 10)).astype(np.float32))
@tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
def model(x):
    y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
    return tf.nn.softmax(tf.matmul(tf.reduce_mean(y, [1, 2]), dense))
converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
open(sys.argv[1], "wb").write(converter.convert())
"""


class FixtureError(RuntimeError):
    """A shared fixture could not be made: every case would fail for it, not for bnn."""


def _required(what: str, run: Run) -> Run:
    if run.rc != 0:
        raise FixtureError(f"tour fixture '{what}' failed (rc {run.rc}): {run.command}\n"
                           f"{run.stderr[-2000:]}")
    return run


def prepare_fixtures(tour: Tour) -> None:
    """Makes the shared fixtures through the CLI under test; records facts for the checks.

    Raises:
        FixtureError: a fixture every case relies on could not be made, or the children do
            not import the checkout under test. An interrupted run that missed its window is
            only recorded: the cases that use it are skipped.
    """
    fx = tour.fixtures
    fx.mkdir(parents=True)
    env = CaseEnv(tour, Case(name="_fixtures", section="fixtures", timeout=600))
    env.dir = fx
    env.logs.mkdir(parents=True, exist_ok=True)
    try:
        _make_fixtures(tour, env)
    finally:
        env.kill_all()


def _make_fixtures(tour: Tour, env: CaseEnv) -> None:
    fx = tour.fixtures
    which = _required("import cli", env.python("import cli; print(cli.__file__)"))
    cli_file = Path(which.stdout.strip().splitlines()[-1]).resolve()
    if REPO_ROOT not in cli_file.parents:
        raise FixtureError(f"the children import cli from {cli_file}, not from {REPO_ROOT}")

    # Images and image-folder data sets (pure Python).
    (fx / "digit.png").write_bytes(pattern_image(1, 7))
    (fx / "rgb.png").write_bytes(png_bytes(
        32, 32, ([(x * 8 + c * 40) % 256 for x in range(32) for c in range(3)] for _ in range(32)),
        channels=3))
    (fx / "digit.bmp").write_bytes(bmp_bytes(8, 8, lambda x, y: (255 * (x == y),) * 3))
    write_image_folder(fx / "shapes", ["a", "b", "c"], 16)

    _required("train run", env.bnn(train_args(2, 15, out=str(fx / "run")), timeout=600))
    # A folder data set with the run's own classes, which the model may be evaluated on.
    write_image_folder(fx / "digitsfolder", RunRecord.read(fx / "run").class_names, 5)
    _required("convert + bundle", env.bnn(["convert", str(fx / "run"), "-o",
                                           str(fx / "model.tflite"), "--bundle", str(fx / "pi")],
                                          timeout=600))
    evaluated = _required("evaluate", env.bnn(["evaluate", str(fx / "model.tflite")]))
    tour.facts["accuracy"] = accuracy_in(evaluated.stdout)
    predicted = _required("predict", env.bnn(["predict", str(fx / "model.tflite"),
                                              str(fx / "digit.png")]))
    tour.facts["predict_rss_mb"] = predicted.max_rss_mb
    _required("float .tflite", env.python(FLOAT_TFLITE_CODE, str(fx / "float.tflite")))

    # An interrupted run: SIGINT during epoch 2 of 3 (backup/ holds epoch 1).
    interrupted = fx / "interrupted"
    proc = env.start_bnn(train_args(3, 30, out=str(interrupted)))
    if wait_until(proc, lambda: read_status(interrupted).get("epochs_completed", 0) >= 1, 600):
        time.sleep(0.2)
        proc.signal(signal.SIGINT)
    env.finish(proc, 300)
    status = read_status(interrupted)
    if status.get("state") != "interrupted" or not _has_backup(interrupted):
        tour.facts["missing interrupted"] = (
            f"the interrupted run fixture missed its window ({STATUS_FILE}: {status})")
        shutil.rmtree(interrupted, ignore_errors=True)

    _make_section9_fixtures(tour, env)


# Section 9's model files (argv: the folder, LAMBDA_MARKER, LAMBDA_LAYER, UNREGISTERED_CLASS,
# FOREIGN_LAYER): classifiers of 8x8x1 digits, written with tf-keras as a user would.
MODEL_FILES_CODE = r"""
import importlib
import sys
import tempfile
from pathlib import Path
import bnn_keras  # noqa: F401  (sets up tf-keras: before tensorflow)
import tensorflow as tf
from tests.lambda_models import marker_writing_lambda

out, marker, lambda_layer, unregistered, foreign = Path(sys.argv[1]), *sys.argv[2:6]


def classifier(seed, dense_name, softmax=True, extra=None):
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Flatten()(inputs)
    x = tf.keras.layers.Dense(10, name=dense_name)(x)
    if extra is not None:
        x = extra(x)
    if softmax:
        x = tf.keras.layers.Activation("softmax")(x)
    return tf.keras.Model(inputs, x)


classifier(0, "teacher_dense").save(out / "teacher.keras")
classifier(1, "teacher_dense").save(out / "other_teacher.keras")
classifier(2, "logits", softmax=False).save(out / "logits.keras")
classifier(3, foreign).save_weights(out / "foreign.h5")
# A layer class of a user's module that is gone when the file is loaded (a class of __main__
# would not do: Keras names that one itself, but tf-keras 2.16 says "'str' object is not
# callable" for a module it cannot import).
with tempfile.TemporaryDirectory() as where:
    Path(where, "user_layers.py").write_text(
        f"import tensorflow as tf\n\n\nclass {unregistered}(tf.keras.layers.Layer):\n"
        "    def call(self, inputs):\n        return inputs\n")
    sys.path.insert(0, where)
    block = getattr(importlib.import_module("user_layers"), unregistered)
    classifier(4, "head", extra=block(name="block")).save(out / "custom.keras")
evil = tf.keras.layers.Lambda(marker_writing_lambda(Path(marker)), name=lambda_layer)
classifier(5, "head", extra=evil).save(out / "evil.h5")
Path(marker).unlink(missing_ok=True)  # building and saving ran the lambda here
"""


def _make_section9_fixtures(tour: Tour, env: CaseEnv) -> None:
    """Model files, Fashion-MNIST IDX files, a staged run stopped in stage 1 and a student
    interrupted in epoch 2 (section 9)."""
    from tests.benchmarks.conftest import write_fashion_idx

    fx = tour.fixtures
    _required("model files", env.python(MODEL_FILES_CODE, str(fx), LAMBDA_MARKER, LAMBDA_LAYER,
                                        UNREGISTERED_CLASS, FOREIGN_LAYER))
    write_fashion_idx(fx / "fashion", train=16, test=8)
    _make_staged_fixture(tour, env)
    _make_student_fixture(tour, env)


def _make_staged_fixture(tour: Tour, env: CaseEnv) -> None:
    """staged/: teacher.keras and run/, the staged recipe distilled from it (given relative to
    staged/), stopped by SIGTERM while stage 1 pauses after its `fit`, as test_stages.py does."""
    folder = tour.fixtures / "staged"
    folder.mkdir()
    shutil.copy2(tour.fixtures / "teacher.keras", folder / "teacher.keras")
    proc = env.start_bnn(staged_args("teacher.keras", "run"), {PAUSE_AFTER_FIT: "300"},
                         cwd=folder)
    if wait_until(proc, paused(proc, PAUSE_AFTER_FIT), 600, interval=0.05):
        proc.signal(signal.SIGTERM)
    stopped = env.finish(proc, 300)
    try:
        statuses = [stage.status for stage in StagedPlan.read(folder / "run").stages]
    except BnnError as exc:
        statuses = [str(exc)]
    if statuses != ["interrupted", "pending"]:
        tour.facts["failed staged"] = (
            f"the staged run fixture was not stopped in stage 1 (rc {stopped.rc}, stages "
            f"{statuses}): {first_message(stopped)[:200]}")
        shutil.rmtree(folder, ignore_errors=True)


def _make_student_fixture(tour: Tour, env: CaseEnv) -> None:
    """distill/: runs/teacher (a copy of the run) and runs/student, distilled from it with
    `--teacher runs/teacher` in distill/, interrupted by SIGINT in epoch 2."""
    folder = tour.fixtures / "distill"
    shutil.copytree(tour.fixtures / "run", folder / "runs" / "teacher", symlinks=True)
    student = folder / "runs" / "student"
    proc = env.start_bnn(train_args(STUDENT_EPOCHS, 30, "--teacher", "runs/teacher",
                                    out="runs/student"), cwd=folder)
    if wait_until(proc, lambda: read_status(student).get("epochs_completed", 0) >= 1, 600):
        time.sleep(0.2)
        proc.signal(signal.SIGINT)
    stopped = env.finish(proc, 300)
    status = read_status(student)
    tour.facts["student epochs done"] = status.get("epochs_completed", 0)
    if status.get("state") == "interrupted" and _has_backup(student):
        return
    if status.get("state") == "finished":
        tour.facts["missing distill"] = "the student fixture missed its window (it finished)"
    else:
        tour.facts["failed distill"] = (
            f"the student fixture failed (rc {stopped.rc}, {STATUS_FILE}: {status}): "
            f"{first_message(stopped)[:200]}")
    shutil.rmtree(folder, ignore_errors=True)
