"""Instruction counts of a fixed fan-out under valgrind's callgrind: the regression guard noise cannot blur (issue 17).

Wall-clock and CPU-time benchmarks on a shared machine move by 10% from one run to the next; the number of
instructions a deterministic scenario executes does not. This runs ``bench/callgrind/scenario.py`` (1,000 RSGI
streams, broadcasts, topic and direct publishes through ``Streams``, the Rust hub and ``RsgiSink``; its docstring
has the details) under ``valgrind --tool=callgrind`` ``--runs`` times (2), and

- fails when the runs' total instruction counts (Ir) differ by more than ``--max-spread`` percent (1): the
  scenario stopped being deterministic, and no comparison would mean anything; and when ``python/sse_fast`` or
  ``rust`` changed between the first run and the last (an edit, a commit, a rebuild: this tree is shared);
- compares the instructions per delivery with the committed baseline ``bench/results/callgrind.json``, phase by
  phase, and fails when the total rose by more than ``--max-rise`` percent (2);
- writes ``bench/results/callgrind.md``: this run against the baseline, per phase, and the functions that spent the
  most instructions (``callgrind_annotate``, self cost), each against its baseline figure, so that a regression can
  be read off the table.

Only the measured phases are counted: valgrind starts with instrumentation off (``--instr-atstart=no``) and the
scenario turns it on through callgrind's client requests (``instrument.c``, compiled here with ``cc`` against the
headers of Debian's ``valgrind`` package) once its streams are open and warm; collection is on only inside
``sys.call_tracing`` (``--toggle-collect``), which the scenario calls once per phase, and a profile is dumped after
each (``--dump-after``); the interpreter must keep that static function in its symbol table (the pyenv build of
this venv does; a stripped one fails with a message). Python's hash seed is fixed (``PYTHONHASHSEED=0``), the
environment is minimal, and address space randomisation is off (``setarch -R``) when ``setarch`` allows it. A run
takes 15 to 35 s. What still varies is small: the fan-out histogram's bucket search depends on the time measured,
which moves the direct phase by about 0.1% and the total by about 0.01%.

The figures depend on the interpreter (its version and build), on valgrind's version and on the machine's
architecture: the baseline records them, and a baseline taken with others is not compared with (the report says so).

Workflow::

    make bench-callgrind            # also the last step of `make bench`; or: python bench/callgrind/run.py
    # a failure names the phase and the functions that grew; after an intended change of the data path (or of
    # the scenario, Python, valgrind), take the new baseline and commit it with the change:
    python bench/callgrind/run.py --update
    git commit -m "... (Ir per delivery X -> Y)" -- bench/results/callgrind.json bench/results/callgrind.md ...

``--update`` still refuses runs that disagree by more than ``--max-spread``. ``--keep DIR`` keeps the first run's
profiles, one per phase, for ``callgrind_annotate --tree=caller`` or kcachegrind (who calls ``memcpy``?).
``CALLGRIND_ARGS`` passes options through make (``make bench CALLGRIND_ARGS='--max-rise 5'``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCENARIO = HERE / "scenario.py"
HELPER_SOURCE = HERE / "instrument.c"
BASELINE = ROOT / "bench" / "results" / "callgrind.json"
REPORT = ROOT / "bench" / "results" / "callgrind.md"
PHASES = ("broadcast", "topic", "direct", "coalesced")  # scenario.PHASES, in the order of its dumps
MARKER = "sys_call_tracing"  # the C function behind sys.call_tracing: collection is on inside it only
TOP_STORED = 40  # functions kept in the baseline, to compare a regression's table with


def tool_versions(python: str) -> dict[str, str]:
    """What the counts depend on, besides the code: recorded with the baseline."""
    probe = "import platform, sse_fast as s; print(platform.python_version(), s.__version__, s._core.build_profile)"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return {
        "python": out[0],
        "sse_fast": out[1],
        "build_profile": out[2],
        "valgrind": valgrind,
        "machine": platform.machine(),
    }


def git_state() -> dict[str, Any]:
    """The commit measured, and the data-path files that differ from it (the counts are of the working tree)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    data_path = ("python/sse_fast", "rust", "Cargo.toml", "Cargo.lock")
    changed = git("status", "--porcelain", "--untracked-files=all", "--", *data_path)
    commit = git("rev-parse", "HEAD").strip()
    # What the counts depend on in this tree, to notice an edit or a rebuild between the first run and the last.
    extensions = sorted((ROOT / "python" / "sse_fast").glob("_core*.so"))
    built = [f"{p.name} {p.stat().st_mtime_ns} {p.stat().st_size}" for p in extensions]
    fingerprint = hashlib.sha256("\n".join([commit, changed, git("diff", "HEAD", "--", *data_path), *built]).encode())
    sources = [p for p in (ROOT / "rust").rglob("*.rs") if "fuzz" not in p.relative_to(ROOT / "rust").parts]
    newest_source = max((p.stat().st_mtime for p in sources), default=0.0)
    return {
        "commit": commit[:7],
        "uncommitted": sorted(line[3:] for line in changed.splitlines() if line.strip()),
        # run.py outside make measures the extension as last built, which may predate an edit of rust/
        "extension_older_than_rust": any(p.stat().st_mtime < newest_source for p in extensions),
        "fingerprint": fingerprint.hexdigest(),
    }


def build_helper(directory: Path) -> Path:
    """Compile ``instrument.c`` into a shared library the scenario loads with ctypes."""
    library = directory / "instrument.so"
    command = ["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(HELPER_SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"callgrind: could not compile {HELPER_SOURCE.name} (needs cc and valgrind/callgrind.h, from Debian's"
            f" valgrind package):\n{done.stderr}"
        )
    return library


def _no_aslr() -> list[str]:
    """``setarch <arch> -R``, when this machine lets a process turn address randomisation off."""
    setarch = shutil.which("setarch")
    if setarch is None:
        return []
    command = [setarch, platform.machine(), "-R"]
    works = subprocess.run([*command, "true"], capture_output=True, check=False).returncode == 0
    return command if works else []


def run_once(python: str, helper: Path, directory: Path, prefix: list[str]) -> dict[str, Any]:
    """One scenario under callgrind: its summary, the Ir of each phase and the phases' profile files."""
    out = directory / "callgrind.out"
    command = [
        *prefix,
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--instr-atstart=no",
        "--collect-atstart=no",
        f"--toggle-collect={MARKER}",
        f"--dump-after={MARKER}",
        python,
        str(SCENARIO),
        "--instrument",
        str(helper),
    ]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=directory, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"callgrind: the scenario failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    if not summary.get("verified"):
        raise SystemExit(f"callgrind: the scenario did not verify its output: {summary}")
    dumps = sorted(directory.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) != len(PHASES):
        raise SystemExit(
            f"callgrind: expected one profile per phase ({len(PHASES)}), found {len(dumps)}: is {MARKER} a symbol of"
            f" this Python ({python})? A stripped interpreter hides it."
        )
    phases = {name: {"ir": _totals(path), "profile": path} for name, path in zip(PHASES, dumps, strict=True)}
    return {"summary": summary, "phases": phases, "ir": sum(p["ir"] for p in phases.values()), "seconds": seconds}


def _totals(profile: Path) -> int:
    for line in profile.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise SystemExit(f"callgrind: no totals in {profile}")


_ANNOTATED = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.+)$")
_LABEL = re.compile(r"^(?P<file>[^:]*):(?P<function>.+?)(?: \[(?P<object>[^\]]*)\])?$")


def top_functions(profiles: list[Path]) -> dict[str, dict[str, Any]]:
    """Self Ir per function over ``profiles`` (callgrind_annotate), keyed by function name; recursion levels merged."""
    functions: dict[str, dict[str, Any]] = {}
    for profile in profiles:
        command = ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(profile)]
        text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            found = _ANNOTATED.match(line)
            if found is None or found.group(2).strip() == "PROGRAM TOTALS":
                continue
            label = _LABEL.match(found.group(2).strip())
            if label is None:
                continue
            name = re.sub(r"'\d+$", "", label.group("function"))
            entry = functions.setdefault(name, {"function": name, "object": "", "ir": 0})
            entry["ir"] += int(found.group(1).replace(",", ""))
            if label.group("object") and not entry["object"]:
                entry["object"] = Path(label.group("object")).name
    return functions


def measure(args: argparse.Namespace, versions: dict[str, str]) -> dict[str, Any]:
    """``args.runs`` runs; the phases' Ir (median over the runs), the spread and the top functions of the first run."""
    prefix = _no_aslr()
    tree = git_state()
    with tempfile.TemporaryDirectory(prefix="sse-fast-callgrind-") as tmp:
        helper = build_helper(Path(tmp))
        runs = []
        for n in range(args.runs):
            directory = Path(tmp) / f"run{n}"
            directory.mkdir()
            run = run_once(args.python, helper, directory, prefix)
            print(f"callgrind: run {n + 1}/{args.runs}: {run['ir']:,} Ir in {run['seconds']:.0f} s", flush=True)
            runs.append(run)
        functions = top_functions([p["profile"] for p in runs[0]["phases"].values()])
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name, phase in runs[0]["phases"].items():
                shutil.copy(phase["profile"], args.keep / f"callgrind.out.{name}")
    if git_state()["fingerprint"] != tree.pop("fingerprint"):
        raise SystemExit(
            "callgrind: python/sse_fast or rust changed (an edit, a commit or a rebuild) while the runs went on: their"
            " counts are of different code; run again"
        )
    summaries = {json.dumps(run["summary"], sort_keys=True) for run in runs}
    if len(summaries) != 1:
        raise SystemExit("callgrind: the runs' scenarios differ: it is not deterministic")
    scenario = runs[0]["summary"]
    totals = [run["ir"] for run in runs]
    phases: dict[str, dict[str, Any]] = {}
    for name in PHASES:
        counts = [run["phases"][name]["ir"] for run in runs]
        shape = scenario["phases"][name]
        ir = statistics.median(counts)
        phases[name] = {
            "ir": round(ir),
            "runs": counts,
            "spread_percent": _spread(counts),
            "ir_per_delivery": round(ir / shape["deliveries"], 1),
            "ir_per_write": round(ir / shape["writes"], 1),
        }
    total = statistics.median(totals)
    deliveries = scenario["total"]["deliveries"]
    ranked = sorted(functions.values(), key=lambda f: -f["ir"])[:TOP_STORED]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **tree,
        **versions,
        "aslr_off": bool(prefix),
        "scenario": scenario,
        "runs": totals,
        "spread_percent": _spread(totals),
        "ir_total": round(total),
        "ir_per_delivery": round(total / deliveries, 1),
        "phases": phases,
        "top_functions": [{**f, "ir_per_delivery": round(f["ir"] / deliveries, 1)} for f in ranked],
        "seconds_per_run": round(statistics.mean(run["seconds"] for run in runs)),
    }


def _spread(counts: list[int]) -> float:
    return round(100 * (max(counts) - min(counts)) / min(counts), 4)


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:,}"


def _change(now: float, before: float | None) -> str:
    return "" if not before else f"{100 * (now / before - 1):+.2f}%"


def comparable(result: dict[str, Any], baseline: dict[str, Any] | None) -> str | None:
    """Why ``baseline`` cannot gate ``result`` (None: it can)."""
    if baseline is None:
        return f"no baseline ({BASELINE.relative_to(ROOT)}): take one with --update"
    if baseline["scenario"] != result["scenario"]:
        return "the scenario changed since the baseline: take a new one with --update"
    for key in ("python", "valgrind", "machine"):
        if baseline.get(key) != result[key]:
            return f"the baseline was taken with {key} {baseline.get(key)}, this run with {result[key]}"
    return None


def render(result: dict[str, Any], baseline: dict[str, Any] | None, verdict: list[str], top: int) -> str:
    """bench/results/callgrind.md (``baseline``: None unless it is comparable)."""
    base_phases = (baseline or {}).get("phases", {})
    base_functions = {f["function"]: f for f in (baseline or {}).get("top_functions", [])}
    scenario = result["scenario"]
    uncommitted = ", ".join(result["uncommitted"]) or "none"
    lines = [
        "# bench/callgrind: instructions per delivery of a fixed fan-out",
        "",
        "Instruction counts (callgrind's Ir) of `bench/callgrind/scenario.py`: the same on every run on one machine,",
        "but they depend on the Python build, valgrind's version and the architecture; and an instruction is not a",
        "nanosecond (cache misses and system calls are not in them). They guard against regressions; the CPU figures",
        "of `make bench-fanout` say what a delivery costs.",
        "",
        f"- date {result['date']}, commit {result['commit']} (uncommitted data-path files: {uncommitted})"
        + ("; the extension was built before the last edit of rust/" if result["extension_older_than_rust"] else ""),
        f"- Python {result['python']}, {result['valgrind']}, {result['machine']}, sse-fast {result['sse_fast']}"
        f" ({result['build_profile']} build); address randomisation {'off' if result['aslr_off'] else 'on'}",
        f"- {scenario['connections']:,} RSGI streams (real `RsgiSink`s over a fake granian transport); counted:"
        " the four phases only, after a warm-up turn of each kind",
        f"- {len(result['runs'])} runs: {', '.join(f'{r:,}' for r in result['runs'])} Ir, spread"
        f" {result['spread_percent']:.4f}%; about {result['seconds_per_run']} s per run under valgrind",
        "- command: `python bench/callgrind/run.py` (`make bench-callgrind`)",
    ]
    if baseline is not None:
        lines.append(f"- baseline: {baseline['date']}, commit {baseline['commit']} ({BASELINE.relative_to(ROOT)})")
    lines += ["", *verdict, "", "## Phases", ""]
    lines += [
        "| phase | publishes | deliveries | writes | Ir | Ir per delivery | baseline | change | Ir per write |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in PHASES:
        shape, phase = scenario["phases"][name], result["phases"][name]
        before = base_phases.get(name, {}).get("ir_per_delivery")
        lines.append(
            f"| {name} | {shape['publishes']:,} | {shape['deliveries']:,} | {shape['writes']:,} | {phase['ir']:,}"
            f" | {phase['ir_per_delivery']:,} | {_figure(before)} | {_change(phase['ir_per_delivery'], before)}"
            f" | {phase['ir_per_write']:,} |"
        )
    before_total = (baseline or {}).get("ir_per_delivery")
    total, per_delivery = scenario["total"], result["ir_per_delivery"]
    lines.append(
        f"| **all** | {total['publishes']:,} | {total['deliveries']:,} | {total['writes']:,} | {result['ir_total']:,}"
        f" | **{per_delivery:,}** | {_figure(before_total)} | {_change(per_delivery, before_total)} | |"
    )
    lines += [
        "",
        "- broadcast: one broadcast per writer turn (a write per delivery); topic: 30 room publishes (50 streams)"
        " and 10 `news.*` ones (250); direct: to one client (2 streams); coalesced: four broadcasts per writer turn",
        "",
        f"## Top {top} functions (self cost, all phases)",
        "",
        "Python code runs inside `_PyEval_EvalFrameDefault` (and the C functions it calls), whichever module it is in;",
        "`_core.abi3.so` is the Rust extension; the fake transport's `send_bytes` is Python code too.",
        "",
        "| # | function | object | Ir | % | Ir per delivery | baseline | change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, f in enumerate(result["top_functions"][:top], 1):
        before = base_functions.get(f["function"], {}).get("ir_per_delivery")
        name = f["function"].replace("|", "\\|")
        lines.append(
            f"| {rank} | `{name}` | {f['object']} | {f['ir']:,} | {100 * f['ir'] / result['ir_total']:.1f}"
            f" | {f['ir_per_delivery']:,} | {_figure(before)} | {_change(f['ir_per_delivery'], before)} |"
        )
    return "\n".join(lines) + "\n"


def judge(result: dict[str, Any], baseline: dict[str, Any] | None, args: argparse.Namespace) -> tuple[bool, list[str]]:
    """(passed, the verdict's lines)."""
    lines = []
    passed = True
    if result["spread_percent"] > args.max_spread:
        passed = False
        lines.append(f"**FAIL**: the runs differ by {result['spread_percent']:.3f}% (at most {args.max_spread}%).")
    why = comparable(result, baseline)
    if baseline is None and args.update:
        lines.append("No earlier baseline.")
    elif why is not None:
        lines.append(f"Not compared with the baseline: {why}.")
        if baseline is None or baseline["scenario"] != result["scenario"]:
            passed = passed and args.update
    else:
        assert baseline is not None
        rise = 100 * (result["ir_per_delivery"] / baseline["ir_per_delivery"] - 1)
        status = "PASS" if rise <= args.max_rise else "FAIL"
        passed = passed and (status == "PASS" or args.update)
        lines.append(
            f"**{status}**: {result['ir_per_delivery']:,} Ir per delivery against {baseline['ir_per_delivery']:,}"
            f" in the baseline ({rise:+.2f}%; a rise of more than {args.max_rise}% fails)."
        )
    return passed, lines


def grown(result: dict[str, Any], baseline: dict[str, Any]) -> list[tuple[str, float]]:
    """(function, change of its Ir per delivery) over both top lists, largest growth first."""
    before = {f["function"]: f["ir_per_delivery"] for f in baseline["top_functions"]}
    now = {f["function"]: f["ir_per_delivery"] for f in result["top_functions"]}
    changes = {name: now.get(name, 0.0) - before.get(name, 0.0) for name in before.keys() | now.keys()}
    return sorted(changes.items(), key=lambda item: -item[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2, help="runs under callgrind (2 or more)")
    parser.add_argument("--max-spread", type=float, default=1.0, help="largest difference between runs, percent")
    parser.add_argument("--max-rise", type=float, default=2.0, help="largest rise of Ir per delivery, percent")
    parser.add_argument("--update", action="store_true", help="write this run as the baseline")
    parser.add_argument("--top", type=int, default=25, help="functions listed in the report")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run the scenario with")
    parser.add_argument(
        "--keep", type=Path, help="copy the first run's profiles here (callgrind.out.<phase>, for callgrind_annotate)"
    )
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("callgrind: valgrind is not installed (Debian: apt-get install valgrind)")
    versions = tool_versions(args.python)
    if versions["build_profile"] != "release":
        raise SystemExit("callgrind: needs a release build of sse_fast._core (make build)")

    result = measure(args, versions)
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else None
    passed, verdict = judge(result, baseline, args)
    update = args.update and result["spread_percent"] <= args.max_spread
    if update:
        verdict.append(f"This run is the new baseline ({BASELINE.relative_to(ROOT)}).")
    shown = baseline if comparable(result, baseline) is None else None
    REPORT.write_text(render(result, shown, verdict, args.top))
    if update:
        BASELINE.write_text(json.dumps(result, indent=2) + "\n")
    for line in verdict:
        print("callgrind: " + line.replace("**", ""))
    base_phases = (shown or {}).get("phases", {})
    for name in PHASES:
        now, before = result["phases"][name]["ir_per_delivery"], base_phases.get(name, {}).get("ir_per_delivery")
        print(f"callgrind:   {name:<10} {now:>10,} Ir per delivery  {_change(now, before)}")
    if shown is not None:
        print("callgrind: the functions that grew most (Ir per delivery):")
        for function, growth in grown(result, shown)[:5]:
            print(f"callgrind:   {growth:+9,.1f}  {function}")
    print(f"callgrind: report in {REPORT.relative_to(ROOT)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
