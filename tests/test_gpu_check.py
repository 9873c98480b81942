"""scripts/gpu_check.sh's dry run (--device cpu --quick, tiny models): every phase runs, each under its cap, and OUT
holds what a GPU run brings back (log.txt and one archive of the rest), so the one-command GPU check cannot rot
between the sessions that have a GPU."""

import csv
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the whole script on the CPU: minutes
def test_gpu_check_dry_run_runs_every_phase(tmp_path, tiny_dir):
    out = tmp_path / "out"
    env = {**os.environ, "MAMBASPEC_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--device", "cpu", "--quick",
                          "--target", tiny_dir["target"], "--mamba-drafter", tiny_dir["mamba2"],
                          "--transformer-drafter", tiny_dir["llama"], "--eagle-drafter", "none"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tgz", "log.txt"]  # the lent machine returns 8 at most
    with tarfile.open(out / "gpu_check.tgz") as tar:
        tar.extractall(out, filter="data")
    phases = list(csv.DictReader((out / "phases.csv").open()))
    assert [p["phase"] for p in phases] == ["lossless", "step", "verify", "bench", "bench_slow", "profile", "compiled"]
    assert all(p["status"] == "ok" for p in phases), phases
    for name in ("lossless.csv", "step.csv", "verify.csv", "bench_results.csv", "bench_slow_results.csv", "profile.txt",
                 "environment.json", "log.txt"):
        assert (out / name).is_file(), name
    lossless = list(csv.DictReader((out / "lossless.csv").open()))
    assert lossless and all(r["same_as_transformers"] == r["prompts"] for r in lossless)
    assert all(r["static_cache"] == "True" for r in lossless)  # the dry run goes through the static cache's path
    verify = list(csv.DictReader((out / "verify.csv").open()))
    assert {int(r["nodes"]) for r in verify} == {1, 4, 16, 64}
    steps = list(csv.DictReader((out / "step.csv").open()))
    assert len(steps) == 5 and all(r.get("ms_per_token") for r in steps), steps
    assert len({r["first_tokens"] for r in steps}) == 1  # every variant decodes the same tokens
    bench = list(csv.DictReader((out / "bench_results.csv").open()))
    assert [r["method"] for r in bench][:2] == ["ar", "mamba"]
    assert "Name" in (out / "profile.txt").read_text()


def test_a_phase_past_its_cap_is_cut_and_the_next_still_runs(tmp_path, tiny_dir, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(gpu_check, "QUICK_CAP", 0.01)
    monkeypatch.setattr(gpu_check, "ARGS", gpu_check.argparse.Namespace(phases="verify,bench", quick=True))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.csv").write_text("method\nar\n")  # the rows a cut bench had written
    failed = gpu_check.run_all(tmp_path, ["--device", "cpu", "--quick", "--out", str(tmp_path)])
    phases = list(csv.DictReader((tmp_path / "phases.csv").open()))
    assert failed == 2 and [p["status"] for p in phases] == ["time cap", "time cap"]
    assert (tmp_path / "bench_results.csv").read_text() == "method\nar\n"  # copied out after the cut
