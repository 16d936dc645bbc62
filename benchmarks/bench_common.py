"""Helpers shared by the speed-and-memory benchmarks: machine facts, child processes, memory, output.

Each measurement that reports a CPU peak memory runs in a child process of its own, because a
process's peak RSS (``ru_maxrss``) only ever grows: two methods measured in one process would hide
each other's peaks. Children write their result as JSON to a file named on their command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger("benchmarks")

REPO = Path(__file__).resolve().parents[1]
MIB = 1024**2


def setup_logging(verbose: bool = False) -> None:
    """Timestamped INFO logging to stderr (DEBUG with ``verbose``)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model and count, RAM, Python/torch versions, torch threads, GPU name, load average, date."""
    import torch

    cpu_model = "unknown"
    ram_gib = None
    try:
        cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name")), cpu_model)
        ram_gib = next((round(int(line.split()[1]) / 1024**2, 1) for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal")), None)
    except OSError:
        pass
    info: dict[str, Any] = {"date": date.today().isoformat(), "nproc": os.cpu_count(), "cpu_model": cpu_model,
                            "ram_gib": ram_gib, "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "device": device,
                            "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)
    return info


def machine_line(machine: dict[str, Any]) -> str:
    """One markdown line describing the machine."""
    gpu = f", GPU {machine['gpu']} ({machine['gpu_memory_gib']} GiB)" if "gpu" in machine else ", no GPU used"
    return (f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['ram_gib']} GiB RAM{gpu}, "
            f"Python {machine['python']}, torch {machine['torch']} ({machine['torch_threads']} threads by default), "
            f"{machine['date']}; 1-min load average at start {machine['loadavg_at_start'][0]}, "
            f"at end {machine.get('loadavg_at_end', ['?'])[0]}.")


# ----------------------------------------------------------------------------------------- memory
def current_rss_mib() -> float:
    """Resident set size of this process now (MiB), from /proc/self/statm."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory of a block: the increase of peak RSS over the RSS at entry (CPU) or of CUDA's peak allocation.

    On the CPU, ``ru_maxrss`` never goes down, so the block's own peak is only visible if no earlier
    part of the process reached a higher RSS: measure one thing per process (see module docstring).
    """

    def __init__(self, device: str, rss_baseline_mib: float | None = None) -> None:
        self.cuda = str(device).startswith("cuda")
        self.rss_baseline_mib = rss_baseline_mib  # count growth from this RSS instead of the RSS at entry
        self.result: dict[str, float] = {}

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._allocated = torch.cuda.memory_allocated()
        self._rss = current_rss_mib() if self.rss_baseline_mib is None else self.rss_baseline_mib
        self._peak_before = peak_rss_mib()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        peak = peak_rss_mib()
        self.result = {"rss_at_start_mib": round(self._rss, 1), "peak_rss_mib": round(peak, 1),
                       "peak_rss_increase_mib": round(peak - self._rss, 1),
                       "peak_rss_reached_before": bool(self._peak_before >= peak)}
        if self.cuda:
            torch.cuda.synchronize()
            self.result["cuda_allocated_at_start_mib"] = round(self._allocated / MIB, 1)
            self.result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
            self.result["cuda_peak_increase_mib"] = round((torch.cuda.max_memory_allocated() - self._allocated) / MIB, 1)
            self.result["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)


def synchronize(device: str) -> None:
    """Wait for queued CUDA work so that wall-clock timings are honest."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------- child processes
def run_child(command: list[str], result_path: Path | None, log_path: Path, env: dict[str, str] | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
    """Run a child (that writes JSON to ``result_path`` unless None); add its wall time, exit code and peak RSS (wait4)."""
    if result_path is not None:
        result_path.unlink(missing_ok=True)
    logger.debug("+ %s", shlex.join(command))
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = None if timeout_s is None else started + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
    record: dict[str, Any] = {"returncode": os.waitstatus_to_exitcode(status),
                              "process_wall_s": round(time.perf_counter() - started, 2),
                              "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                              "process_max_rss_mib": round(usage.ru_maxrss / 1024, 1), "log": str(log_path)}
    if record["returncode"] == 0 and (result_path is None or result_path.is_file()):
        if result_path is not None:
            record.update(json.loads(result_path.read_text()))
    else:
        tail = log_path.read_text()[-2000:] if log_path.is_file() else ""
        logger.error("child failed (exit %s): %s\n%s", record["returncode"], shlex.join(command), tail)
    return record


def child_env(extra_pythonpath: Path | None = None, **variables: str) -> dict[str, str]:
    """The current environment plus ``variables``; ``extra_pythonpath`` goes first on PYTHONPATH."""
    env = dict(os.environ, **variables)
    if extra_pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return env


def write_child_result(path: Path, result: dict[str, Any]) -> None:
    """What a child hands back to its parent."""
    Path(path).write_text(json.dumps(result, indent=1, default=str))


# ------------------------------------------------------------------------------------------ output
def write_outputs(out: Path, result: dict[str, Any], markdown: str) -> None:
    """``result.json`` and ``result.md`` in ``out``, and the markdown on stdout (the report itself)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "result.md").write_text(markdown)
    sys.stdout.write("\n" + markdown)
    logger.info("written: %s, %s", out / "result.json", out / "result.md")


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that reproduces this run, relative to the repository root."""
    return shlex.join([".venv/bin/python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def command_and_notes(result: dict[str, Any]) -> list[str]:
    """The markdown lines every report ends with: the command and the run's notes."""
    lines = ["", f"Command: `{result['command']}`"]
    if result["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    return lines


def parse_or_run_child(parser: argparse.ArgumentParser, argv: list[str] | None,
                       child: Callable[[dict[str, Any]], dict[str, Any]]) -> argparse.Namespace | None:
    """Parse the command line and set up logging; in a child process (``--child SPEC``) run ``child(spec)``,
    hand its result to the parent and return None."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not args.child:
        return args
    spec = json.loads(args.child)
    write_child_result(Path(spec["result"]), child(spec))
    return None


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]


def median(values: list[float]) -> float:
    """Median of a non-empty list (nan when empty)."""
    import statistics

    return float(statistics.median(values)) if values else float("nan")


def add_child_process_arguments(parser: argparse.ArgumentParser, out_name: str, timeout_s: float = 3600,
                                threads_help: str = "torch threads in the children (default: torch's)") -> None:
    """The options every script that measures in child processes shares: threads, timeout, --out, --child."""
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    parser.add_argument("--timeout", type=float, default=timeout_s, help="seconds per child before it is killed")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / out_name)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true")
