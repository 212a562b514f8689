"""The DAG through the SLURM profile on a real single-node SLURM cluster.

The cluster (munged, slurmctld, slurmd; two fake GPUs) is started by .ci/slurm/start.sh and
stopped by .ci/slurm/stop.sh. It needs root and Debian's slurm-wlm + munge, which .ci/run
installs: on a developer's machine without them the tests skip; in CI (CI=true) they fail.

What is checked: jobs really run as SLURM jobs (job ids, `scontrol show job`), a rule that
asks for a GPU is granted one (JOB_GRES, CUDA_VISIBLE_DEVICES, the GPU partition, its memory
and time limit), every other job gets none, and the smoke DAG completes through the profile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_dvc import load_workflow

BIN = Path(sys.executable).parent
PROFILE = REPO / "profiles" / "slurm"
PARTITIONS = PROFILE / "partitions.example.yaml"
START, STOP = REPO / ".ci" / "slurm" / "start.sh", REPO / ".ci" / "slurm" / "stop.sh"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SLURM_TOOLS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "srun"]
# Smoke-DAG targets run through SLURM (6 subjects): Table 1, and one cheap training job of
# a real training rule (a few seconds at smoke size), which must be granted its GPU.
SMOKE_TARGETS = ["results/tables/table1.csv", "results/deep/resnet3d_ct/metrics.json"]
# Test-only: poll SLURM 15 s after a job finished instead of 40 s. A job here takes about
# 15 s (two Snakemake start-ups: the job step and the rule); the plugin adds 10 s to the
# interval after every poll that finds nothing finished, so shorter intervals cost time.
POLLING = ["--slurm-init-seconds-before-status-checks", "15", "--seconds-between-status-checks", "15"]


# --- static: which rules ask for a GPU (no cluster needed) ---------------------------------


def workflow_rules():
    return list(load_workflow().rules)


def resource(resources, name: str):
    """A rule's declared value (Snakemake wraps it in a Resource; None when unset)."""
    value = resources.get(name)
    return getattr(value, "raw", value)


def requests_gpu(resources) -> bool:
    return bool(resource(resources, "gpu")) or "gpu" in str(resource(resources, "gres") or "")


def test_only_training_rules_request_a_gpu_and_they_say_how_much_memory_and_time():
    """Convention (docs/running.md): a rule that asks for a GPU also sets mem_mb and runtime
    in the rule, above the profile's CPU defaults; the profile gives no rule a GPU."""
    profile = yaml.safe_load((PROFILE / "config.v9+.yaml").read_text(encoding="utf-8"))
    assert "gpu" not in profile["default-resources"] and "gres" not in profile["default-resources"]
    assert not any("gpu" in str(v) for v in (profile.get("set-resources") or {}).values())
    defaults = profile["default-resources"]
    for rule in workflow_rules():
        if not requests_gpu(rule.resources):
            continue
        for name in ("mem_mb", "runtime"):
            value = resource(rule.resources, name)
            assert isinstance(value, int), f"rule {rule.name} asks for a GPU but sets no fixed {name}"
            assert value > defaults[name], f"rule {rule.name}: {name}={value} is not above the CPU default"


@pytest.mark.slow
def test_profile_takes_account_and_partition_from_the_environment(tmp_path):
    """COVIDMTL_SLURM_ACCOUNT / COVIDMTL_SLURM_PARTITION become slurm_account / slurm_partition
    of every job; unset, no account or partition is passed (the plugin's own fallbacks)."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent(GPU_SNAKEFILE))
    env = _slurm_env()

    def dry_run(**extra) -> str:
        result = subprocess.run([str(BIN / "snakemake"), "-n", "--profile", str(PROFILE)], cwd=tmp_path,
                                env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    jobs = snakemake_jobs(dry_run(COVIDMTL_SLURM_ACCOUNT="proj42", COVIDMTL_SLURM_PARTITION="short"))
    for job in jobs.values():
        if job["rule"] != "all":
            assert job["resources"]["slurm_account"] == "proj42" and job["resources"]["slurm_partition"] == "short"
    jobs = snakemake_jobs(dry_run())
    by_rule = {job["rule"]: job["resources"] for job in jobs.values()}
    assert "slurm_account" not in by_rule["cpu_step"] and "slurm_partition" not in by_rule["cpu_step"]
    assert by_rule["train_on_gpu"]["gpu"] == "1" and "gpu" not in by_rule["cpu_step"]


# --- the cluster ----------------------------------------------------------------------------


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"the SLURM tests must run in CI: {reason}")
    pytest.skip(reason)


def _slurm_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", ""), "/usr/sbin", "/sbin"])
    env["PYTHON"] = sys.executable
    for name in list(env):  # a developer's own cluster settings must not leak in
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SNAKEMAKE_", "COVIDMTL_SLURM_")):
            env.pop(name)
    return env


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    env = _slurm_env()
    if os.geteuid() != 0:
        _unavailable("starting munged/slurmctld/slurmd needs root")
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool, path=env["PATH"]) is None]
    if missing:
        _unavailable(f"SLURM is not installed (missing {missing}): apt-get install slurm-wlm munge")
    state = tmp_path_factory.mktemp("slurm-cluster")
    started = subprocess.run(["bash", str(START), str(state)], env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        subprocess.run(["bash", str(STOP), str(state)], env=env, capture_output=True, timeout=120)
        _unavailable(f"the single-node cluster did not start (exit {started.returncode}): {started.stderr[-3000:]}")
    try:
        yield {"node": started.stdout.strip(), "env": env, "state": state}
    finally:
        subprocess.run(["bash", str(STOP), str(state)], env=env, capture_output=True, timeout=120)


def scontrol_job(job_id: str, env: dict) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-d", "-o", job_id], env=env, capture_output=True,
                         text=True, check=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def snakemake_jobs(log: str) -> dict[str, dict]:
    """Snakemake job id -> rule, local or not, requested resources, SLURM job id (from its log)."""
    jobs = {}
    for match in re.finditer(r"^(local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", log, flags=re.M):
        body = match.group(3)
        jobid = re.search(r"^    jobid: (\d+)$", body, flags=re.M).group(1)
        resources_line = re.search(r"^    resources: (.*)$", body, flags=re.M)
        resources = dict(re.findall(r"(\w+)=([^,]+)", resources_line.group(1))) if resources_line else {}
        jobs[jobid] = {"rule": match.group(2), "local": bool(match.group(1)), "resources": resources}
    for jobid, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log):
        jobs[jobid]["slurm_id"] = slurm_id
    return jobs


def run_through_profile(workdir: Path, env: dict, targets: list[str], options: list[str], timeout: int = 1500) -> str:
    command = [str(BIN / "snakemake"), *targets, "--profile", str(PROFILE), "--jobs", "6", *POLLING, *options]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-10000:]
    return log


def check_gpu_grants(jobs: dict[str, dict], env: dict) -> list[dict]:
    """Every SLURM job: completed; GPU granted exactly when its rule asked for one."""
    records = []
    for job in jobs.values():
        if job["local"]:
            continue
        assert "slurm_id" in job, f"rule {job['rule']} did not run as a SLURM job"
        info = scontrol_job(job["slurm_id"], env)
        assert info["JobState"] == "COMPLETED", (job, info)
        assert info["Comment"].startswith(f"rule_{job['rule']}"), (job, info)
        gpus = int(job["resources"].get("gpu", 0) or 0)
        if not gpus and "gpu" in job["resources"].get("gres", ""):
            gpus = int(job["resources"]["gres"].rsplit(":", 1)[-1])
        if gpus:
            assert info["JOB_GRES"] == f"gpu:{gpus}", f"rule {job['rule']} asked for {gpus} GPU(s): {info}"
        else:
            assert info["JOB_GRES"] == "(null)", f"rule {job['rule']} asked for no GPU but got {info['JOB_GRES']}"
        records.append({**job, "slurm": info})
    return records


GPU_SNAKEFILE = """
rule all:
    input:
        "gpu.txt",
        "cpu.txt",


# stands in for a training rule (the convention: gpu, mem_mb and runtime in the rule)
rule train_on_gpu:
    output:
        "gpu.txt",
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    shell:
        "echo SLURM_JOB_ID=$SLURM_JOB_ID CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}} > {output}"


rule cpu_step:
    output:
        "cpu.txt",
    shell:
        "echo SLURM_JOB_ID=$SLURM_JOB_ID CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}} > {output}"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_gpu_rule_is_granted_a_gpu_and_cpu_rule_is_not(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(textwrap.dedent(GPU_SNAKEFILE))
    env = {**slurm_cluster["env"], "SNAKEMAKE_SLURM_PARTITIONS": str(PARTITIONS)}
    log = run_through_profile(tmp_path, env, [], [])
    records = {r["rule"]: r for r in check_gpu_grants(snakemake_jobs(log), env)}
    assert set(records) == {"train_on_gpu", "cpu_step"}

    gpu, cpu = records["train_on_gpu"]["slurm"], records["cpu_step"]["slurm"]
    # routed by profiles/slurm/partitions.example.yaml: GPU jobs to the GPU partition
    assert (gpu["Partition"], cpu["Partition"]) == ("gpu", "cpu")
    # the training rule's own resources, the profile's defaults for the rest
    assert (gpu["MinMemoryNode"], gpu["TimeLimit"], gpu["NumCPUs"]) == ("16000M", "04:00:00", "2")
    assert (cpu["MinMemoryNode"], cpu["TimeLimit"]) == ("4000M", "01:00:00")
    assert gpu["JobName"] == cpu["JobName"] and gpu["JobName"].startswith("covidmtl_")
    # inside the jobs: SLURM's job id, and the granted GPU made visible to CUDA
    seen = {name: dict(re.findall(r"(\w+)=(\S*)", (tmp_path / f"{name}.txt").read_text(encoding="utf-8")))
            for name in ("gpu", "cpu")}
    assert seen["gpu"]["SLURM_JOB_ID"] == records["train_on_gpu"]["slurm_id"]
    assert seen["cpu"]["SLURM_JOB_ID"] == records["cpu_step"]["slurm_id"]
    assert re.fullmatch(r"[01]", seen["gpu"]["CUDA_VISIBLE_DEVICES"]), seen
    assert seen["cpu"]["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_dag_runs_through_the_slurm_profile(slurm_cluster, tmp_path):
    for name in ("Snakefile", "workflow", "config", "envs", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "six_subjects.yaml").write_text("synthetic:\n  n_subjects: 6\n")
    env = {**slurm_cluster["env"], "SNAKEMAKE_SLURM_PARTITIONS": str(PARTITIONS)}
    log = run_through_profile(tmp_path, env, SMOKE_TARGETS, ["--configfile", "config/smoke.yaml", "six_subjects.yaml"])
    records = check_gpu_grants(snakemake_jobs(log), env)
    rules = {r["rule"] for r in records}
    assert {"synthetic_subject", "dataset_index", "curate", "manifest", "split", "table1", "lungseg"} <= rules
    assert sum(r["rule"] == "curate" for r in records) == 6
    assert len({r["slurm_id"] for r in records}) == len(records)
    for target in SMOKE_TARGETS:
        assert (tmp_path / target).exists()
    # the real training rule: a GPU in the GPU partition, its own memory, time and threads
    gpu_jobs = [r for r in records if r["slurm"]["JOB_GRES"] != "(null)"]
    assert gpu_jobs and {r["rule"] for r in gpu_jobs} <= {"deep_train", "deepsc_train", "twod_train",
                                                           "twod_train_size_sweep"}, gpu_jobs
    for job in gpu_jobs:
        info = job["slurm"]
        assert info["Partition"] == "gpu" and info["MinMemoryNode"] == f"{job['resources']['mem_mb']}M"
    assert all(r["slurm"]["Partition"] == "cpu" for r in records if r not in gpu_jobs)
