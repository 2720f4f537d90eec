"""Fault tour: bad inputs and faults a new user meets, tried on all nine `bnn` commands.

Issue 13 ("Nothing lost, nothing silently wrong") reports a tour of 180 bad inputs and faults.
This script is that tour, re-runnable on any checkout. It measures, for each case, what a user
gets back, and whether anything that existed before the command survived it:

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

A case whose outcome has several of these gets the first in the order hang, data_lost, crash,
traceback, internal, silent_wrong, refused, slow, bad_message; all of them are kept in the
JSON report (`flags`).

Sections follow the issue: 1 signals at each phase of a run (SIGINT/SIGTERM mid-epoch, after
the last epoch, when the epoch backup is emptied, while model.keras is written, and in the pause
`BNN_TEST_PAUSE_BEFORE_FINISH=SECONDS` opens where the code supports it), then `--resume`;
2 outputs that would destroy inputs (convert onto its own input, symlinks, FIFOs, device nodes
made in the case folder: a real device node is never a target); 3 two writers on one run folder;
4 output locations that must be checked before the long work (refused bundle, read-only and
full tmpfs mounts, which need root; skipped otherwise, always unmounted); 5 `--resume` with
options that differ from the run; 6 silent wrong results (class names, bare model files, other
classes, float label, --threads 100000, 24 bit-flipped .tflite files); 7 messages (ranges,
JSON, corrupt images, offline TFDS, import order, a 12000x12000 PNG with peak memory);
8 the ordinary mistakes of a new user on every command.

First it prepares fixtures through the CLI under test (one tiny QuickNet run on digits, its
.tflite and Raspberry Pi bundle, an interrupted run, a float .tflite, images, image-folder data
sets), then runs each case in its own folder with fresh copies of the fixtures it uses. Every
child runs with TFDS_DATA_DIR pointing at an empty folder, so TFDS never finds a cached data set.

    python benchmarks/fault_tour.py --workdir /tmp/tour                      # .venv/bin/bnn
    python benchmarks/fault_tour.py --workdir /tmp/tour --only 'convert_*' --json tour.json
    python benchmarks/fault_tour.py --workdir /tmp/tour \\
        --bnn "env PYTHONPATH=/path/to/checkout .venv/bin/python -c 'import cli; cli.main()'" \\
        --python "env PYTHONPATH=/path/to/checkout .venv/bin/python"

Run it with `nice` on a shared machine; timing budgets assume a 2-core machine (~4 s to import
TensorFlow). Only the standard library is needed to run the tour itself.
"""

import argparse
import concurrent.futures
import dataclasses
import fnmatch
import hashlib
import json
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
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

# ----------------------------------------------------------------------------------------------
# Outcome categories
# ----------------------------------------------------------------------------------------------

# Worst first: a case gets the first category among its flags.
PRECEDENCE = ("hang", "data_lost", "crash", "traceback", "internal", "silent_wrong", "refused",
              "slow", "bad_message")
TALLY_ORDER = ("clean", "ok", "internal", "traceback", "crash", "data_lost", "silent_wrong",
               "refused", "slow", "bad_message", "hang", "skipped")

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
    """A started child: stdout/stderr go to files, so nothing blocks on a full pipe."""

    def __init__(self, argv: List[str], cwd: Path, env: Dict[str, str], log_prefix: Path):
        self.argv = argv
        self.out_path = log_prefix.with_suffix(".out")
        self.err_path = log_prefix.with_suffix(".err")
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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_entry(path: Path) -> str:
    """What a path is, without following symlinks or opening FIFOs and devices."""
    st = path.lstat()
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "symlink -> " + os.readlink(path)
    if stat.S_ISREG(mode):
        return "file " + sha256(path)
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


def folder_split_is_test(relative: str) -> bool:
    """bnn's image-folder rule: crc32('<class>/<file>') % 100 < 20 goes to the test split."""
    return zlib.crc32(relative.encode()) % 100 < 20


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
        name: Unique name (`--only` matches it with shell patterns).
        section: The issue's section ("1 signals", ..., "8 new user").
        args: `bnn` arguments; `{name}` placeholders are paths (see `FIXTURE_COPIES`).
        expect: "error" (a clean exit-2 error), "ok" (exit 0 and `check` passes), "either",
            or "custom" (the runner flags what is wrong; exit 0 is ok, an error clean).
        check: On success, checks the result; on an error, checks the message. Returns None,
            a reason (silent_wrong for a result, bad_message for a message), or (category,
            reason).
        setup: Creates the case's files (may call `env.mount_tmpfs`; raise `Skip`).
        run: A custom runner (signals, races, Python snippets) returning the main `Run`; it
            may add flags with `env.flag(category, reason)`.
        env: Extra environment variables for the children.
        budget: Seconds above which an otherwise right answer is `slow`.
        timeout: Seconds before the child is killed (`hang`).
        may_change: Globs (relative to the case folder) of files the command may rewrite.
        exclusive: Timing-sensitive; never run next to another case (with --jobs > 1).
        background: Mostly waiting (offline retries); started first, next to the other cases.
        traceback_ok: A Python snippet whose exceptions print tracebacks by design.
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
    may_change: Sequence[str] = ()
    exclusive: bool = False
    background: bool = False
    traceback_ok: bool = False

    def time_budget(self) -> float:
        if self.budget is not None:
            return self.budget
        return ERROR_BUDGET_S if self.expect == "error" else OK_BUDGET_S


class Skip(Exception):
    """The case cannot run here."""


@dataclasses.dataclass
class Tour:
    """What every case shares: how to run the CLI, the work folder, the fixtures' facts."""

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
# empty file.EXT, {trunc_tflite} / {trunc_keras} / {trunc_png} the first bytes of a valid file,
# {npy_bad} a (4, 3) float32 .npy.
FIXTURE_COPIES = {
    "run": ("run", "run"),                        # a finished run folder (2 epochs)
    "interrupted": ("interrupted", "interrupted"),  # SIGINT in epoch 2 of 3; backup/ has epoch 1
    "model": ("run/model.keras", "model.keras"),  # the model file alone, no config.json
    "tflite": ("model.tflite", "model.tflite"),   # `bnn convert` of the run
    "bundle": ("pi", "pi"),                       # its Raspberry Pi bundle
    "float": ("float.tflite", "float.tflite"),    # a plain float TFLite model, no bnn metadata
    "img": ("digit.png", "digit.png"),            # 8x8 gray PNG
    "rgb": ("rgb.png", "rgb.png"),                # 32x32 RGB PNG
    "bmp": ("digit.bmp", "digit.bmp"),            # 8x8 24-bit BMP
    "shapes": ("shapes", "shapes"),               # image folder, classes a b c
    "digitsfolder": ("digitsfolder", "digitsfolder"),  # image folder, classes 0-9 like digits
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
        self._mounts: List[Path] = []
        self._made: Dict[str, Path] = {}
        self._started: List[Proc] = []
        self.signalled: set = set()  # ids of runs the case killed on purpose
        self.passed_as: Optional[str] = None  # a custom runner's category when nothing is flagged
        self._lock = threading.Lock()

    # -- placeholders ---------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        """The path a `{key}` placeholder stands for, creating it on first use."""
        with self._lock:
            if key not in self._made:
                self._made[key] = self._make(key)
            return self._made[key]

    def _copy_fixture(self, name: str, dest: str) -> Path:
        source = self.tour.fixtures / name
        if not source.exists():
            raise Skip(f"fixture {name} is missing (its preparation failed)")
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
            return self._write("trunc.keras", (fx / "run" / "model.keras").read_bytes()[:4000])
        if key == "trunc_png":
            data = (fx / "rgb.png").read_bytes()
            return self._write("trunc.png", data[:len(data) // 2])
        if key == "npy_bad":
            return self._write("inputs.npy", npy_bytes((4, 3)))
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

    def start(self, argv: List[str], extra_env: Optional[Dict[str, str]] = None) -> Proc:
        prefix = self.logs / f"{self.case.name}.{len(self.steps) + len(self._started)}"
        proc = Proc(argv, self.dir, self.child_env(extra_env), prefix)
        self._started.append(proc)
        return proc

    def finish(self, proc: Proc, timeout: Optional[float] = None) -> Run:
        run = proc.wait(timeout or self.case.timeout)
        self.steps.append(run)
        return run

    def bnn(self, args: Sequence[str], timeout: Optional[float] = None,
            extra_env: Optional[Dict[str, str]] = None) -> Run:
        return self.finish(self.start_bnn(args, extra_env), timeout)

    def start_bnn(self, args: Sequence[str], extra_env: Optional[Dict[str, str]] = None) -> Proc:
        return self.start([*self.tour.bnn, *self.expand(args)], extra_env)

    def python(self, code: str, timeout: Optional[float] = None) -> Run:
        return self.finish(self.start([*self.tour.python, "-c", code]), timeout)

    def flag(self, category: str, reason: str) -> None:
        self.flags.append((category, reason))

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

    def clear_folder(self) -> None:
        """Removes the case folder, unmounting what an interrupted earlier tour left there."""
        try:
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        except OSError:
            mounts = []
        for point in sorted(mounts, reverse=True):
            if point.startswith(str(self.dir) + "/"):
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


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


def first_message(run: Run, stdout_too: bool = True) -> str:
    """The `Error:` line, else the first message line of stderr, else stdout's last line."""
    lines = message_lines(run.stderr)
    for line in lines:
        if line.startswith(("Error:", "Internal error")):
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


def clean_error(run: Run) -> bool:
    lines = message_lines(run.stderr)
    return run.rc == 2 and len(lines) == 1 and lines[0].startswith("Error:")


def read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def history_rows(run_dir: Path) -> int:
    try:
        return max(0, len([x for x in (run_dir / "history.csv").read_text().splitlines() if x]) - 1)
    except OSError:
        return 0


def partial_files(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "partial" in p.name)


def model_being_saved(folder: Path) -> bool:
    """A temporary model file is there (status.json and history.csv have their own)."""
    return any("partial" in p.name and ("model" in p.name or p.suffix in (".keras", ".h5"))
               for p in folder.glob(".*"))


def accuracy_in(text: str) -> Optional[str]:
    match = re.search(r"test accuracy ([0-9.]+)", text)
    return match.group(1) if match else None


# -- checks (Check functions) -------------------------------------------------------------------


def says(*fragments: str, any_of: Sequence[str] = (), not_: Sequence[str] = ()) -> Check:
    """The error message holds every fragment, one of `any_of`, and none of `not_`."""

    def check(env: CaseEnv, run: Run):
        text = first_message(run).lower()
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
        return None if head[4:8] == b"TFL3" else f"{rel} is not a TFLite flatbuffer"

    return check


def valid_json_output(env: CaseEnv, run: Run):
    try:
        json.loads(run.stdout)
    except ValueError:
        return "--json printed no valid JSON"
    return None


def usable_tflite(rel: str) -> Check:
    """The written .tflite can be evaluated and used to predict an image."""

    def check(env: CaseEnv, run: Run):
        problem = is_tflite(rel)(env, run)
        if problem:
            return problem
        evaluated = env.bnn(["evaluate", f"{{d}}/{rel}", "--dataset", "digits", "--limit", "40"])
        if evaluated.rc != 0:
            return f"convert exited 0 but evaluate refuses its output: {first_message(evaluated)}"
        predicted = env.bnn(["predict", f"{{d}}/{rel}", "{img}"])
        if predicted.rc != 0:
            return f"convert exited 0 but predict refuses its output: {first_message(predicted)}"
        return None

    return check


def finished_run(rel: str, epochs: int, session_epochs: Optional[int] = None,
                 config_epochs: Optional[int] = None) -> Check:
    """RUN_DIR holds a finished run of `epochs` epochs with a loadable model.keras."""

    def check(env: CaseEnv, run: Run):
        run_dir = env.dir / rel
        metrics = read_json(run_dir / "metrics.json")
        if metrics.get("epochs") != epochs:
            return f"metrics.json says {metrics.get('epochs')} epochs, expected {epochs}"
        if history_rows(run_dir) != epochs:
            return f"history.csv has {history_rows(run_dir)} rows, expected {epochs}"
        if session_epochs is not None and metrics.get("epochs_this_session") != session_epochs:
            return ("data_lost", f"trained {metrics.get('epochs_this_session')} epochs this "
                                 f"session, expected {session_epochs} (completed epochs redone)")
        recorded = read_json(run_dir / "config.json").get("epochs")
        if config_epochs is not None and recorded != config_epochs:
            return f"config.json does not record epochs={config_epochs}"
        if partial_files(run_dir):
            return f"partial files left: {partial_files(run_dir)}"
        loaded = env.bnn(["summary", f"{{d}}/{rel}"])
        if loaded.rc != 0:
            return ("data_lost", f"model.keras does not load: {first_message(loaded)}")
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


def _status(run_dir: Path) -> Dict[str, Any]:
    return read_json(run_dir / "status.json")


def _has_backup(run_dir: Path) -> bool:
    return any((run_dir / "backup").rglob("*.index"))


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
            return _status(run_dir).get("epochs_completed", 0) >= wanted

        if phase == "backup_emptied":
            # Keras empties backup/ when fit returns; the fixed code may keep it until the end,
            # so a partial or final model.keras also counts as "the save has started".
            return lambda: done_epochs() and (
                not _has_backup(run_dir) or model_being_saved(run_dir)
                or (run_dir / "model.keras").exists())
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
        at_signal = _status(run_dir)
        state = (f"status {at_signal.get('state')} {at_signal.get('epochs_completed')}/"
                 f"{at_signal.get('epochs')}, backup={'yes' if _has_backup(run_dir) else 'no'}, "
                 f"model.keras={'yes' if (run_dir / 'model.keras').exists() else 'no'}, "
                 f"partial={len(partial_files(run_dir))}")
        exited_first = proc.poll()
        if hit and not exited_first:
            proc.signal(signum)
        first = env.finish(proc, 240)
        if not hit or exited_first:
            env.flag("skipped", f"window missed: train ended (rc {first.rc}) before the signal")
            return first
        if at_signal.get("state") == "finished":
            env.flag("skipped", "window missed: the run had finished when the signal came "
                                "(no BNN_TEST_PAUSE_BEFORE_FINISH in this checkout?)")
            return first
        env.notes.append(f"signalled at {state}; train rc {first.rc}")
        env.signalled.add(id(first))
        # Exiting through the signal itself, or click's "Aborted!" after Ctrl-C, is how a
        # process may end; what counts is the run folder, checked through --resume below.
        expected_end = first.rc in (0, 2, 130, 143, -signum) or (
            first.rc == 1 and "Aborted!" in first.stderr)
        if not expected_end or "Fatal Python error" in first.stderr:
            env.flag("crash", f"the signalled train ended with rc {first.rc}: "
                              f"{first_message(first)[:100]}")
        completed = _status(run_dir).get("epochs_completed",
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
            if not wait_until(first, lambda: _status(run_dir).get("state") == "running", 240):
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
        config = read_json(run_dir / "config.json")
        metrics = read_json(run_dir / "metrics.json")
        if len(winners) == 2:
            reported = [accuracy_in(r.stdout) for r in (a, b)]
            env.flag("data_lost", f"both exited 0 (accuracies {reported}); the folder holds seed "
                                  f"{config.get('seed')}'s config and test accuracy "
                                  f"{metrics.get('test_accuracy', float('nan')):.4f}")
            return b
        if len(winners) == 1:
            winner, seed = winners[0]
            loser = losers[0]
            if config.get("seed") != seed:
                env.flag("data_lost", f"the winner had seed {seed}, "
                                      f"config.json says {config.get('seed')}")
            elif accuracy_in(winner.stdout) != f"{metrics.get('test_accuracy', -1):.4f}":
                env.flag("data_lost", "the winner's printed accuracy is not metrics.json's")
            if not clean_error(loser):
                if "Internal error" in loser.stderr or loser.rc == 1:
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
    if not wait_until(first, lambda: _status(run_dir).get("epochs_completed", 0) >= 1, 240):
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


def import_order_runner(code: str) -> Callable[[CaseEnv], Run]:
    """A Python snippet: it must work, or raise our KerasVersionError with its fix."""

    def run(env: CaseEnv) -> Run:
        result = env.python(code, timeout=120)
        last = (result.stderr.strip().splitlines() or [""])[-1]
        env.notes.append(last[:120])
        if result.rc != 0 and "KerasVersionError" not in last:
            env.flag("internal", f"not KerasVersionError: {last[:100]}")
        return result

    return run


def pixel_bomb(env: CaseEnv) -> Run:
    """predict on a 12000x12000 PNG: refused, or answered within a modest memory budget."""
    big = env.dir / "huge.png"
    side = 12000
    big.write_bytes(png_bytes(side, side, (bytes(side) for _ in range(side))))
    result = env.bnn(["predict", "{tflite}", str(big)], timeout=300)
    reference = env.tour.facts.get("predict_rss_mb") or 0.0
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
        reference = env.tour.facts.get("accuracy")
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


def edit_json(key: str, rel: str,
              change: Callable[[Dict[str, Any]], Any]) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        path = env.path(key) / rel
        data = read_json(path)
        change(data)
        path.write_text(json.dumps(data, indent=2))

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


def symlink(rel: str, target: Union[str, Callable[[CaseEnv], str]]) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        os.symlink(target(env) if callable(target) else target, env.dir / rel)

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
        name = next(f"bad{i}.png" for i in range(1000)
                    if folder_split_is_test(f"a/bad{i}.png") == in_test_split)
        (root / "a" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x07garbage" * 40)
        env.tour.facts[f"bad_image_{env.case.name}"] = name

    return setup


def fixture_bytes(rel: str) -> Callable[[CaseEnv], bytes]:
    return lambda env: (env.tour.fixtures / rel).read_bytes()


def tmpfs(rel: str, **kwargs) -> Callable[[CaseEnv], None]:
    def setup(env: CaseEnv) -> None:
        env.mount_tmpfs(rel, **kwargs)

    return setup


# ----------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------

RUN_PROGRESS_FILES = ("*/status.json", "*/history.csv", "*/flips.csv", "*/flips.png", "*/backup*",
                      "*/metrics.json", "*/model.keras", "*/config.json")
PIXEL_OPTIONS = ("images", "pixels", "limit")


def build_cases() -> List[Case]:
    cases: List[Case] = []

    def add(name: str, section: str, args: Sequence[str] = (), **kw) -> None:
        cases.append(Case(name=name, section=section, args=list(args), **kw))

    # 1. Signals at each phase of a run, then --resume ------------------------------------------
    s1 = "1 signals"
    for phase in SIGNAL_PHASES:
        for sig_name, signum in (("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)):
            extra = {"BNN_TEST_PAUSE_BEFORE_FINISH": "3"} if phase == "pause_before_finish" else {}
            add(f"{sig_name}_{phase}", s1, expect="custom", run=signal_runner(phase, signum),
                env=extra, exclusive=True, timeout=300, budget=400)

    # 2. Outputs never destroy inputs -------------------------------------------------------------
    s2 = "2 outputs"
    before_work = dict(budget=BEFORE_WORK_BUDGET_S, exclusive=True)
    add("convert_onto_own_input", s2, ["convert", "{run}/model.keras", "-o", "{run}/model.keras"],
        **before_work)
    add("convert_run_onto_its_model", s2, ["convert", "{run}", "-o", "{run}/model.keras"],
        **before_work)
    add("convert_onto_run_config", s2, ["convert", "{run}", "-o", "{run}/config.json"],
        **before_work)
    add("convert_symlink_to_input", s2, ["convert", "{run}", "-o", "{d}/out.tflite"],
        setup=then(uses("run"), symlink("out.tflite", "run/model.keras")), **before_work)
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
        setup=then(uses("run"), write_file("run/model.tflite", fixture_bytes("float.tflite"))),
        **before_work)
    add("convert_output_is_dir", s2, ["convert", "{run}", "-o", "{empty}"])
    add("convert_output_new_parent", s2, ["convert", "{run}", "-o", "{d}/new/sub/m.tflite"],
        expect="either", check=is_tflite("new/sub/m.tflite"))

    # 3. One writer per run folder ----------------------------------------------------------------
    s3 = "3 one writer"
    add("two_trains_together", s3, expect="custom", run=two_writers_runner(0.0), exclusive=True,
        timeout=400, budget=400)
    add("two_trains_3s_apart", s3, expect="custom", run=two_writers_runner(3.0), exclusive=True,
        timeout=400, budget=400)
    add("two_trains_second_while_first_runs", s3, expect="custom", run=two_writers_runner(None),
        exclusive=True, timeout=400, budget=400)
    add("resume_while_training", s3, expect="custom", run=resume_while_training, exclusive=True,
        timeout=400, budget=400)

    # 4. Output locations checked before the long work --------------------------------------------
    s4 = "4 before work"
    add("convert_refused_bundle", s4,
        ["convert", "{run}", "-o", "{d}/good.tflite", "--bundle", "{bundle}"],
        setup=then(uses("run", "bundle"), write_file("good.tflite", fixture_bytes("float.tflite"))),
        **before_work)
    add("convert_refused_bundle_new_output", s4,
        ["convert", "{run}", "-o", "{d}/new.tflite", "--bundle", "{bundle}"],
        check=nothing_written("new.tflite"), **before_work)
    add("convert_readonly_output", s4, ["convert", "{run}", "-o", "{d}/ro/model.tflite"],
        setup=tmpfs("ro", readonly=True), **before_work)
    add("convert_readonly_existing_output", s4, ["convert", "{run}", "-o", "{d}/ro/old.tflite"],
        setup=lambda env: env.mount_tmpfs(
            "ro", files={"old.tflite": fixture_bytes("float.tflite")(env)}, readonly=True),
        **before_work)
    add("convert_full_disk_output", s4, ["convert", "{run}", "-o", "{d}/full/model.tflite"],
        setup=tmpfs("full", leave_free=8192), budget=60, exclusive=True)
    add("convert_bundle_on_readonly", s4,
        ["convert", "{run}", "-o", "{d}/m.tflite", "--bundle", "{d}/ro/pi"],
        setup=tmpfs("ro", readonly=True), check=nothing_written("m.tflite"), **before_work)
    add("train_readonly_output", s4, train_args(1, 2, out="{d}/ro/run"),
        setup=tmpfs("ro", readonly=True), **before_work)
    add("train_full_disk_output", s4, train_args(1, 2, out="{d}/full/run"),
        setup=tmpfs("full", size="64k"), budget=60, exclusive=True)

    # 5. --resume states its terms ----------------------------------------------------------------
    s5 = "5 resume"
    resumable = dict(may_change=RUN_PROGRESS_FILES, timeout=300)
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
        setup=edit_json("interrupted", "status.json",
                        lambda s: s.update(state="running", pid=999999)),
        expect="ok", check=finished_run("interrupted", 3), **resumable)
    add("resume_finished", s5, ["train", "--resume", "{run}", "--verbose", "0"],
        check=says("finish"), timeout=300)
    add("resume_finished_status_deleted", s5, ["train", "--resume", "{run}", "--verbose", "0"],
        setup=remove("run", "status.json"), check=says("finish"), timeout=300)
    add("resume_finished_status_running", s5, ["train", "--resume", "{run}", "--verbose", "0"],
        setup=edit_json("run", "status.json", lambda s: s.update(state="running", pid=999999)),
        check=says("finish"), timeout=300)
    add("resume_no_backup", s5, ["train", "--resume", "{interrupted}", "--verbose", "0"],
        setup=remove("interrupted", "backup"), expect="either",
        check=finished_run("interrupted", 3), **resumable)
    add("resume_empty_folder", s5, ["train", "--resume", "{empty}"])
    add("resume_corrupt_config", s5, ["train", "--resume", "{interrupted}", "--verbose", "0"],
        setup=then(uses("interrupted"), write_file("interrupted/config.json", b"{\"model\": ")),
        check=says("config.json"))

    # 6. No silent wrong success -------------------------------------------------------------
    s6 = "6 silent wrong"
    add("convert_class_names_mismatch", s6, ["convert", "{run}", "-o", "{d}/m.tflite"],
        setup=edit_json("run", "config.json", lambda c: c.update(class_names=["a", "b", "c"])),
        check=says(any_of=("class",)), timeout=300, budget=60)
    add("convert_bare_model_file", s6, ["convert", "{model}", "-o", "{d}/bare.tflite"],
        expect="either", check=usable_tflite("bare.tflite"), timeout=300)
    add("evaluate_other_classes", s6, ["evaluate", "{tflite}", "--dataset", "folder:{shapes}"],
        check=says(any_of=("class",)))
    add("evaluate_same_classes_folder", s6,
        ["evaluate", "{tflite}", "--dataset", "folder:{digitsfolder}"],
        expect="ok", check=stdout_has("test accuracy"))
    add("benchmark_float_tflite_label", s6,
        ["benchmark", "{float}", "--runs", "3", "--warmup", "1"],
        expect="ok", check=stdout_has(not_=("binary (LCE)",)))
    add("benchmark_threads_100000", s6,
        ["benchmark", "{tflite}", "--threads", "100000", "--runs", "2"],
        check=says("thread"), timeout=120)
    add("evaluate_threads_100000", s6,
        ["evaluate", "{tflite}", "--threads", "100000", "--limit", "10"], check=says("thread"),
        timeout=120)
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
    add("train_model_option_broken_json", s7,
        train_args(1, 2, "--model-option", "section_filters=[16,32"), check=says("json"))
    add("train_model_option_no_equals", s7, train_args(1, 2, "--model-option", "section_filters"))
    add("train_model_option_unknown_key", s7, train_args(1, 2, "--model-option", "nope=1"),
        check=says("nope"))
    add("train_model_option_wrong_type", s7,
        train_args(1, 2, "--model-option", "section_filters=16"), check=says("section_filters"))
    for command in ("summary", "inspect"):
        add(f"{command}_num_classes_0", s7, [command, "quicknet", "--num-classes", "0"],
            check=says("class"))
        add(f"{command}_input_shape_1_1_1", s7, [command, "quicknet", "--input-shape", "1,1,1"],
            check=says(any_of=("shape", "input")))
    add("models_num_classes_0", s7, ["models", "quick*", "--num-classes", "0"], check=says("class"))
    add("models_input_shape_1_1_1", s7, ["models", "quick*", "--input-shape", "1,1,1"],
        check=says(any_of=("shape", "input")))
    add("train_folder_corrupt_image", s7, train_args(1, 2, "--dataset", "folder:{shapes}"),
        setup=corrupt_folder(in_test_split=False),
        check=lambda env, run: says(env.tour.facts[f"bad_image_{env.case.name}"])(env, run),
        timeout=240)
    add("evaluate_folder_corrupt_image", s7,
        ["evaluate", "{tflite}", "--dataset", "folder:{shapes}"],
        setup=corrupt_folder(in_test_split=True),
        check=lambda env, run: says(env.tour.facts[f"bad_image_{env.case.name}"])(env, run))
    offline = dict(budget=OFFLINE_BUDGET_S, background=True, timeout=OFFLINE_TIMEOUT_S)
    add("offline_train_cifar10_default", s7,
        ["train", "binary-densenet28", "--epochs", "1", "--steps-per-epoch", "1", "--verbose", "0",
         "-o", "{d}/run"], check=says(any_of=("download", "internet", "network", "offline")),
        **offline)
    add("offline_evaluate_mnist", s7, ["evaluate", "{tflite}", "--dataset", "mnist"],
        check=says(any_of=("download", "internet", "network", "offline")), **offline)
    add("import_tensorflow_first", s7, expect="custom",
        run=import_order_runner("import tensorflow as tf; import bnn_keras; print('imported')"),
        traceback_ok=True)
    add("import_keras3_bound_first", s7, expect="custom",
        run=import_order_runner("import tensorflow as tf; tf.keras.layers.Layer; import bnn_keras"),
        traceback_ok=True)
    add("predict_pixel_bomb_12000x12000", s7, expect="either", run=pixel_bomb, exclusive=True,
        timeout=300, budget=60)

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
        expect="ok", check=finished_run("run", 1), timeout=300)
    # convert
    add("convert_missing_source", s8, ["convert", "{nope}"], check=says("{nope}"))
    add("convert_txt_as_model", s8, ["convert", "{txt}"])
    add("convert_empty_keras", s8, ["convert", "{empty_keras}"])
    add("convert_truncated_keras", s8, ["convert", "{trunc_keras}"])
    add("convert_tflite_as_model", s8, ["convert", "{tflite}"])
    add("convert_folder_without_model", s8, ["convert", "{empty}"])
    add("convert_corrupt_run_config", s8, ["convert", "{run}", "-o", "{d}/m.tflite"],
        setup=then(uses("run"), write_file("run/config.json", b"{\"dataset\": ")),
        check=says("config.json"))
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
        expect="ok", check=is_tflite("model.bin"), timeout=300)
    # evaluate
    add("evaluate_missing_file", s8, ["evaluate", "{nope}"], check=says("{nope}"))
    add("evaluate_txt", s8, ["evaluate", "{txt}"])
    add("evaluate_keras_as_tflite", s8, ["evaluate", "{model}"])
    add("evaluate_empty_file", s8, ["evaluate", "{empty_tflite}"])
    add("evaluate_truncated_tflite", s8, ["evaluate", "{trunc_tflite}"])
    add("evaluate_unknown_dataset", s8, ["evaluate", "{tflite}", "--dataset", "cifar11"],
        check=says("cifar11"))
    add("evaluate_limit_0", s8, ["evaluate", "{tflite}", "--limit", "0"], check=says("limit"))
    add("evaluate_threads_0", s8, ["evaluate", "{tflite}", "--threads", "0"], check=says("thread"))
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
    add("benchmark_threads_0", s8, ["benchmark", "{tflite}", "--threads", "0"],
        check=says("thread"))
    add("benchmark_compare_float_missing", s8,
        ["benchmark", "{tflite}", "--runs", "3", "--compare-float", "{nope}"], check=says("{nope}"))
    add("benchmark_ok", s8, ["benchmark", "{tflite}", "--runs", "5"], expect="ok",
        check=stdout_has("median"))
    add("benchmark_compare_float_run", s8,
        ["benchmark", "{tflite}", "--runs", "5", "--compare-float", "{run}"], expect="ok",
        check=stdout_has("float"), timeout=300)
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
        setup=remove("bundle", "model.tflite"), check=says("model.tflite"))
    add("check_bundle_bad_model_json", s8, ["check-bundle", "{bundle}"],
        setup=then(uses("bundle"), write_file("pi/model.json", b"{")), check=says("model.json"))
    add("check_bundle_truncated_expected_output", s8, ["check-bundle", "{bundle}"],
        setup=lambda env: (env.path("bundle") / "expected_output.bin").write_bytes(b"\x00" * 6),
        check=says("expected"))
    add("check_bundle_labels_mismatch", s8, ["check-bundle", "{bundle}"],
        setup=lambda env: (env.path("bundle") / "labels.txt").write_text("a\nb\n"),
        check=says("labels"))
    add("check_bundle_flipped_model", s8, ["check-bundle", "{bundle}"], expect="either",
        setup=lambda env: (env.path("bundle") / "model.tflite").write_bytes(flip_bit(
            (env.tour.fixtures / "model.tflite").read_bytes(),
            (env.tour.fixtures / "model.tflite").stat().st_size // 2, 6)))
    return cases


# ----------------------------------------------------------------------------------------------
# Running a case
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    name: str
    section: str
    expect: str
    category: str
    flags: List[Tuple[str, str]]
    rc: Optional[int]
    seconds: float
    first_stderr: str
    last_stdout: str
    command: str
    note: str
    max_rss_mb: float
    steps: List[Dict[str, Any]]


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
        if has_traceback(step) and not case.traceback_ok:
            flags.append(("traceback", first_message(step)[:100]))
        if "Internal error" in step.stderr:
            flags.append(("internal", first_message(step)[:100]))
    if case.expect in ("error", "either") and main.rc is not None and main.rc != 0:
        if main.rc == 1 and "Internal error" not in main.stderr:
            flags.append(("internal", f"exit 1: {first_message(main)[:80]}"))
        elif main.rc == 2 and not clean_error(main):
            count = len(message_lines(main.stderr))
            flags.append(("bad_message", f"not one 'Error:' line ({count} lines)"))
        elif main.rc not in (1, 2) and not is_crash(main):
            flags.append(("bad_message", f"exit code {main.rc}"))
        if case.check and case.expect == "error" and main.rc == 2:
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
        if clean_error(main):
            flags.append(("refused", first_message(main)[:100]))
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


def execute(tour: Tour, case: Case) -> Result:
    env = CaseEnv(tour, case)
    env.clear_folder()
    env.dir.mkdir(parents=True)
    env.logs.mkdir(parents=True, exist_ok=True)
    main: Optional[Run] = None
    lost: List[str] = []
    try:
        try:
            if case.setup:
                case.setup(env)
            args = env.expand(case.args) if case.args else []
            before = snapshot(env.dir)
            main = case.run(env) if case.run else env.bnn(case.args)
            lost = lost_entries(before, snapshot(env.dir), case.may_change)
            category, flags = classify(case, env, main, lost)
        except Skip as exc:
            category, flags = "skipped", [("skipped", str(exc))]
            args = []
        except Exception as exc:  # a bug of the tour itself: report it, go on with the others
            category, flags = "skipped", [("skipped", f"tour error: {type(exc).__name__}: {exc}")]
            args = []
    finally:
        for proc in env._started:
            if proc.result is None:
                proc.signal(signal.SIGKILL)
                proc.wait(5)
        env.unmount_all()
    main = main or Run([], 0, 0.0, "", "")
    reason = next((r for c, r in flags if c == category), "")
    note = "; ".join(x for x in [reason, *env.notes] if x)
    return Result(
        name=case.name, section=case.section, expect=case.expect, category=category, flags=flags,
        rc=main.rc, seconds=round(main.seconds, 2),
        first_stderr=first_message(main, stdout_too=False)[:240],
        last_stdout=(main.stdout.strip().splitlines() or [""])[-1][:240],
        command=shlex.join(["bnn", *args]) if args else main.command,
        note=note[:400], max_rss_mb=round(main.max_rss_mb, 1),
        steps=[{"command": s.command, "rc": s.rc, "seconds": round(s.seconds, 2),
                "first_stderr": first_message(s, stdout_too=False)[:200],
                "max_rss_mb": round(s.max_rss_mb, 1)} for s in env.steps],
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
open(sys.argv[1] if len(sys.argv) > 1 else "float.tflite", "wb").write(converter.convert())
"""


def prepare_fixtures(tour: Tour, log: Callable[[str], None]) -> None:
    """Makes the shared fixtures through the CLI under test; records facts for the checks."""
    fx = tour.fixtures
    stamp = fx / "facts.json"
    if stamp.is_file():
        tour.facts.update(read_json(stamp))
        log(f"fixtures: reusing {fx}")
        return
    shutil.rmtree(fx, ignore_errors=True)
    fx.mkdir(parents=True)
    prep = Case(name="_fixtures", section="fixtures", timeout=600)
    env = CaseEnv(tour, prep)
    env.dir = fx
    env.logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def step(what: str, run: Run) -> Run:
        message = first_message(run)[:100] if run.rc else ""
        log(f"fixtures: {what}: rc {run.rc}, {run.seconds:.1f} s  {message}")
        return run

    # Images and image-folder data sets (pure Python).
    (fx / "digit.png").write_bytes(pattern_image(1, 7))
    (fx / "rgb.png").write_bytes(png_bytes(
        32, 32, ([(x * 8 + c * 40) % 256 for x in range(32) for c in range(3)] for _ in range(32)),
        channels=3))
    (fx / "digit.bmp").write_bytes(bmp_bytes(8, 8, lambda x, y: (255 * (x == y),) * 3))
    write_image_folder(fx / "shapes", ["a", "b", "c"], 16)
    write_image_folder(fx / "digitsfolder", [str(d) for d in range(10)], 5)

    which = step("which modules", env.python(
        "import cli, bnn_keras, convert; print(cli.__file__); print(bnn_keras.__file__)"))
    tour.facts["cli_file"] = which.stdout.strip().splitlines()[0] if which.rc == 0 else "?"
    log(f"fixtures: python imports cli from {tour.facts['cli_file']}")
    step("train run", env.bnn(train_args(2, 15, out=str(fx / "run")), timeout=600))
    step("convert + bundle", env.bnn(["convert", str(fx / "run"), "-o", str(fx / "model.tflite"),
                                      "--bundle", str(fx / "pi")], timeout=600))
    evaluated = step("evaluate", env.bnn(["evaluate", str(fx / "model.tflite")]))
    tour.facts["accuracy"] = accuracy_in(evaluated.stdout)
    predicted = step("predict",
                     env.bnn(["predict", str(fx / "model.tflite"), str(fx / "digit.png")]))
    tour.facts["predict_rss_mb"] = predicted.max_rss_mb
    step("float .tflite", env.finish(env.start([*tour.python, "-c", FLOAT_TFLITE_CODE,
                                                str(fx / "float.tflite")])))
    # An interrupted run: SIGINT during epoch 2 of 3 (backup/ holds epoch 1).
    interrupted = fx / "interrupted"
    proc = env.start_bnn(train_args(3, 30, out=str(interrupted)))
    if wait_until(proc, lambda: _status(interrupted).get("epochs_completed", 0) >= 1, 600):
        time.sleep(0.2)
        proc.signal(signal.SIGINT)
    step("interrupted run", env.finish(proc, 300))
    status = _status(interrupted)
    if status.get("state") != "interrupted" or not _has_backup(interrupted):
        log(f"fixtures: the interrupted run is not usable ({status}); resume cases are skipped")
        shutil.rmtree(interrupted, ignore_errors=True)
    tour.facts["fixtures_s"] = round(time.monotonic() - started, 1)
    stamp.write_text(json.dumps(tour.facts, indent=2))


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def default_bnn() -> str:
    """The bnn next to this Python, else the repository's .venv/bin/bnn, else bnn on PATH."""
    candidates = [Path(sys.executable).with_name("bnn"),
                  Path(__file__).resolve().parent.parent / ".venv" / "bin" / "bnn"]
    found = next((c for c in candidates if c.is_file()), None)
    return shlex.quote(str(found)) if found else "bnn"


def python_for(bnn: List[str]) -> List[str]:
    first = Path(bnn[0])
    if first.name == "bnn" and (first.parent / "python").exists():
        return [str(first.parent / "python")]
    return [sys.executable]


def print_report(results: List[Result], wall: float, tour: Tour, out=sys.stdout) -> None:
    counts = {c: 0 for c in TALLY_ORDER}
    for r in results:
        counts[r.category] = counts.get(r.category, 0) + 1
    print("", file=out)
    print(f"Fault tour: {len(results)} cases in {wall / 60:.1f} min "
          f"(fixtures {tour.facts.get('fixtures_s', 0):.0f} s), "
          f"CLI from {tour.facts.get('cli_file')}",
          file=out)
    print("", file=out)
    print("| cases | " + " | ".join(c for c in TALLY_ORDER if counts[c]) + " |", file=out)
    print("|---" * (1 + sum(1 for c in TALLY_ORDER if counts[c])) + "|", file=out)
    print(f"| {len(results)} | " + " | ".join(str(counts[c]) for c in TALLY_ORDER if counts[c])
          + " |", file=out)
    print("", file=out)
    for category in TALLY_ORDER:
        names = [r.name for r in results if r.category == category]
        if not names:
            continue
        print(f"{category} ({len(names)}):", file=out)
        if category in ("clean", "ok"):
            print("  " + ", ".join(names), file=out)
            continue
        for r in results:
            if r.category == category:
                print(f"  {r.name}: {r.note[:160]}", file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bnn", default=default_bnn(),
                        help="How to run the CLI (a shell-quoted command) [default: the bnn next "
                             "to this Python].")
    parser.add_argument("--python", default=None,
                        help="A Python that imports the same checkout (for the import-order cases "
                             "and the float .tflite) [default: the python next to --bnn].")
    parser.add_argument("--workdir", required=True, type=Path,
                        help="Folder for fixtures, case folders and logs (cases are re-created).")
    parser.add_argument("--only", default=None,
                        help="Comma-separated shell patterns of case names or sections.")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Cases run at once (timing-sensitive cases always run alone).")
    parser.add_argument("--no-background", action="store_true",
                        help="Run the offline cases in line instead of next to the others.")
    parser.add_argument("--reuse-fixtures", action="store_true",
                        help="Keep WORKDIR/fixtures from an earlier tour of the same checkout.")
    parser.add_argument("--json", type=Path, default=None, help="Write every result here.")
    parser.add_argument("--list", action="store_true", help="List the cases and exit.")
    args = parser.parse_args(argv)

    cases = build_cases()
    if args.only:
        patterns = [p.strip() for p in args.only.split(",") if p.strip()]
        cases = [c for c in cases if any(fnmatch.fnmatch(c.name, p) or fnmatch.fnmatch(c.section, p)
                                         for p in patterns)]
    if args.list:
        for c in cases:
            print(f"{c.section:16s} {c.name:44s} {c.expect:6s} {shlex.join(c.args)[:90]}")
        print(f"{len(cases)} cases")
        return 0

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # A tour started in the background (`cmd &`) inherits an ignored SIGINT, and so would
        # every child: Ctrl-C would not reach the trains the signal cases interrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    bnn = shlex.split(args.bnn)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    empty_tfds = workdir / "tfds-empty"
    empty_tfds.mkdir(exist_ok=True)
    base_env = dict(os.environ, TFDS_DATA_DIR=str(empty_tfds), PYTHONUNBUFFERED="1")
    base_env.pop("BNN_TEST_PAUSE_BEFORE_FINISH", None)
    base_env.pop("TF_USE_LEGACY_KERAS", None)  # the import-order cases need the user's default
    tour = Tour(bnn=bnn, python=shlex.split(args.python) if args.python else python_for(bnn),
                workdir=workdir, base_env=base_env)
    print_lock = threading.Lock()

    def log(line: str) -> None:
        with print_lock:
            print(line, flush=True)

    started = time.monotonic()
    if not args.reuse_fixtures:
        (tour.fixtures / "facts.json").unlink(missing_ok=True)
    prepare_fixtures(tour, log)
    fixture_state = snapshot(tour.fixtures)

    results: List[Result] = []
    done = [0]

    def run_one(case: Case) -> Result:
        result = execute(tour, case)
        with print_lock:
            done[0] += 1
            results.append(result)
            print(f"[{done[0]:3d}/{len(cases)}] {result.category:12s} rc {str(result.rc):>4s} "
                  f"{result.seconds:6.1f}s  {case.name}: "
                  f"{(result.note or result.first_stderr or result.last_stdout)[:70]}",
                  flush=True)
        return result

    background = [c for c in cases if c.background and not args.no_background]
    inline = [c for c in cases if c not in background]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs) + len(background))
    bg_futures = [pool.submit(run_one, c) for c in background]
    shared = [c for c in inline if not c.exclusive]
    alone = [c for c in inline if c.exclusive]
    if args.jobs > 1:
        for future in [pool.submit(run_one, c) for c in shared]:
            future.result()
    else:
        for c in shared:
            run_one(c)
    for c in alone:
        run_one(c)
    for future in bg_futures:
        future.result()
    pool.shutdown()
    wall = time.monotonic() - started

    changed = lost_entries(fixture_state, snapshot(tour.fixtures), ())
    if changed:
        print(f"WARNING: the shared fixtures changed during the tour: {changed[:5]}")
    order = {c.name: i for i, c in enumerate(build_cases())}
    results.sort(key=lambda r: order.get(r.name, 0))
    print_report(results, wall, tour)
    if args.json:
        counts: Dict[str, int] = {}
        for r in results:
            counts[r.category] = counts.get(r.category, 0) + 1
        args.json.write_text(json.dumps({
            "bnn": args.bnn, "cli_file": tour.facts.get("cli_file"), "wall_s": round(wall, 1),
            "facts": tour.facts, "tally": counts,
            "results": [dataclasses.asdict(r) for r in results],
        }, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
