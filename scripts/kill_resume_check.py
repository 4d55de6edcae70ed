"""kill -9 a real `cora train` at random moments, resume it, and compare with a run that was never killed.

The test suite does this on a tiny random backbone at named kill points (tests/test_crash_resume.py);
this script does it on a real backbone with SIGKILL at random wall-clock times (seeded), so a kill
can land anywhere: loading, mid-step, mid-validation, mid-write.

    python scripts/kill_resume_check.py --data runs/ml1m --cf runs/mf --out runs/kill-check --kills 4 --seed 1

The training options (--backbone, --max-steps, ...) go to `cora train`, the same for both runs;
the defaults make a ~2-minute run on SmolLM2 on one CPU thread with a validation every 2 steps.
Prints one line per kill and a verdict; exit status 0 only when the killed run's best weights, last checkpoint, log and summary
equal the uninterrupted run's (timings aside).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

# Passed to `cora train` as given: small enough that one run takes minutes on a CPU, with
# validations (and so checkpoint writes) often enough for the kills to land between them.
TRAIN_OPTIONS = {"--backbone": "smollm2-135m", "--max-steps": "8", "--batch-size": "2", "--warmup-steps": "2",
                 "--eval-every": "2", "--limit-valid": "16"}
# Fields that measure time or memory: the only ones allowed to differ.
TIMING = {"time_s", "time", "samples_per_s", "wall_time_s", "peak_rss_mb", "elapsed_s", "log_bytes"}


def _train(args: list[str], out: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cora", "train", *args, "--out", str(out), "--keep-checkpoint"]
    # Its own process group, so the kill takes any helper process along.
    return subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def _log(path: Path) -> list[dict]:
    return [_untimed(json.loads(line)) for line in path.read_text().splitlines()]


def _differences(a: Path, b: Path) -> list[str]:
    """What differs between two finished run folders (empty: the same training)."""
    out = []
    for name in ("model.safetensors", "checkpoint/trainable.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        if x.keys() != y.keys():
            out.append(f"{name}: different tensor names")
            continue
        out += [f"{name}: {k} differs (max |diff| {(x[k] - y[k]).abs().max().item():.3g})"
                for k in x if not torch.equal(x[k], y[k])]
    if _log(a / "log.jsonl") != _log(b / "log.jsonl"):
        out.append("log.jsonl differs")
    sa, sb = (_untimed(json.loads((r / "train_summary.json").read_text())) for r in (a, b))
    if sa != sb:
        out.append(f"train_summary.json differs: {sorted(k for k in sa if sa.get(k) != sb.get(k))}")
    leftovers = sorted(p.name for p in a.iterdir() if p.name.startswith("."))
    if leftovers:
        out.append(f"temporaries left in {a}: {leftovers}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--cf", help="CF run (for CoRA / CoLLM / BinLLM)")
    parser.add_argument("--method", default="cora")
    parser.add_argument("--out", required=True, type=Path, help="folder for the two runs (replaced)")
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill times")
    parser.add_argument("--min-s", type=float, default=5.0, help="earliest kill after a start")
    parser.add_argument("--max-s", type=float, default=None,
                        help="latest kill after a start (default: 0.8 x the uninterrupted run's wall time)")
    for flag, default in TRAIN_OPTIONS.items():
        parser.add_argument(flag, default=default, help=f"cora train {flag} (default {default})")
    args = parser.parse_args()
    common = ["--data", args.data, "--method", args.method, *(["--cf", args.cf] if args.cf else [])]
    for flag in TRAIN_OPTIONS:
        common += [flag, str(getattr(args, flag[2:].replace("-", "_")))]

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    ref, killed = args.out / "straight", args.out / "killed"

    start = time.monotonic()
    proc = _train(common, ref, resume=False)
    if proc.wait() != 0:
        print(proc.stderr.read()[-3000:], file=sys.stderr)
        return 2
    straight_s = time.monotonic() - start
    print(f"uninterrupted run: {straight_s:.0f} s")

    rng = random.Random(args.seed)
    hi = args.max_s if args.max_s is not None else 0.8 * straight_s
    resume, kills = False, 0
    while kills < args.kills:
        at = rng.uniform(args.min_s, max(hi, args.min_s + 1))
        proc = _train(common, killed, resume=resume)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log = killed / "log.jsonl"
            steps = [r["step"] for r in _log(log)] if log.exists() else []
            print(f"kill {kills + 1}: SIGKILL after {at:.1f} s; validations logged so far at steps {steps}")
            kills += 1
            resume = True
            continue
        if proc.returncode != 0:
            print(proc.stderr.read()[-3000:], file=sys.stderr)
            return 2
        print(f"the run finished before the kill at {at:.1f} s (kills so far: {kills}); not counted")
        break
    proc = _train(common, killed, resume=True)
    if proc.wait() != 0:
        print(proc.stderr.read()[-3000:], file=sys.stderr)
        return 2

    diffs = _differences(killed, ref)
    for d in diffs:
        print("DIFFERENT:", d)
    print(f"{kills} kills, then --resume: " + ("identical to the uninterrupted run (tensors bitwise; log, summary)"
                                              if not diffs else f"{len(diffs)} differences"))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
