"""One prepared check of the GPU path, writing one report (report.md and report.json).

    bash launch/gpu_check.sh [--cpu] [--out DIR]      # installs carried wheels where DeepSpeed is missing
    python -m cats_ds.tools.gpu_check [--cpu] [--out DIR]

Steps, each run as its own process the way a user runs it (logs in DIR/logs/):
  environment  - Python, torch, CUDA, DeepSpeed and transformers versions, the device, and its
                 measured matrix rate (bf16 8192^3 products on a GPU), the MFU denominator;
  exactness    - tests/dist/cats_exactness.py at world size 1: scales fixed at 1 equal plain
                 training and CATS matches the float64 dense reference on ZeRO 1, 2 and 3 (fp32),
                 and CATS's first Gram matrix under bf16 (ZeRO 1, 2, 3) and fp16 within 5% of it;
  throughput   - cats_ds.tools.bench (plain and CATS on the same batches) for ZeRO 1/2/3 and, on the
                 big preset, ZeRO-2: tokens/s, step time, peak memory, model FLOP utilization,
                 the CATS/plain ratio and CATS's buffers against N x the partition;
  bible        - a short Bible run with evaluation and export, its per-language table;
  translate    - cats_ds.translate on the export, against the run's own test hypotheses;
  curvature    - cats_ds.tools.curvature on the run;
  resume       - a run stopped half-way and resumed against the uninterrupted run.
A GPU step never runs two ranks: NCCL cannot put two ranks on one GPU, so the 2-rank
exactness stays with the CPU test suite. ``--cpu`` is the dry run of the same steps on the
tiny preset (DS_ACCELERATOR=cpu); the test suite runs it. The exit status is 1 if any check
failed; the targets (CATS/plain <= 1.05 on ZeRO-2, MFU) are reported, not enforced.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cats_ds.config import load_config
from cats_ds.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
EXACTNESS_TOLERANCE = 1e-5     # fp32 against the float64 reference (as tests/test_cats_zero.py)
LOW_PRECISION_TOLERANCE = 0.05  # bf16/fp16: the first step's Gram matrix, relative (as the CPU test)
RATIO_TARGET = 1.05            # CATS/plain step time on ZeRO-2
STEPS = ("environment", "exactness", "throughput", "bible", "translate", "curvature", "resume")


@dataclass(frozen=True)
class Profile:
    """What each step runs: the GPU sizes, or the CPU dry run's tiny ones."""

    name: str
    device: str                     # for translate and curvature
    bench_config: str
    bench_runs: tuple[tuple[int, tuple[str, ...]], ...]   # (ZeRO stage, overrides), one launch each
    bench_args: tuple[str, ...]     # cats_ds.tools.bench options: timed steps, warmup
    bible: tuple[str, ...]          # cats_ds.train arguments
    resume: tuple[str, ...]         # cats_ds.train arguments of the tiny resume runs
    resume_steps: int
    curvature: tuple[str, ...]      # cats_ds.tools.curvature options
    low_precision: tuple[str, ...]  # DeepSpeed JSONs whose first CATS Gram matrix is held to the reference
    env: dict = field(default_factory=dict)


GPU = Profile(
    name="gpu", device="cuda", bench_config="cats_ds/configs/bible8_gpu.yaml",
    bench_runs=((1, ()), (2, ()), (3, ()), (2, ("model.preset=big",))), bench_args=("--steps", "30"),
    bible=("--config", "cats_ds/configs/bible8_gpu.yaml", "train.max_minutes=2.5", "train.max_steps=100000",
           "train.save_every=0", "eval.test_sentences=200"),
    resume=("--config", "cats_ds/configs/bible8_gpu.yaml", "model.preset=tiny", "eval.test_sentences=8",
            "eval.every_steps=0", "train.export=false", "train.save_every=0"),
    resume_steps=20, curvature=("--iterations", "10", "--batches", "2", "--trace-samples", "2"),
    low_precision=("ds_configs/zero1_bf16.json", "ds_configs/zero2_bf16.json", "ds_configs/zero3_bf16.json",
                   "ds_configs/zero2_fp16.json"))

# the dry run: the tiny preset, small steps, one thread a process (a second OpenMP thread only
# waits on a busy 2-core machine: token-by-token decoding was several times slower with two)
CPU_RUN = ("--config", "cats_ds/configs/bible8_cpu.yaml", "model.preset=tiny", "sampling.tokens_per_step=800",
           "sampling.max_tokens_per_micro=400", "train.save_every=0", "train.max_minutes=0", "train.threads=1")
CPU = Profile(
    name="cpu", device="cpu", bench_config="cats_ds/configs/bible8_cpu.yaml",
    # cats.interval=1: the one warmup step before the timed ones is a CATS update with its meta pass
    bench_runs=tuple((stage, ("model.preset=tiny", "cats.interval=1")) for stage in (1, 2, 3)),
    bench_args=("--steps", "2"),
    bible=(*CPU_RUN, "train.max_steps=12", "eval.test_sentences=16", "eval.dev_sentences=32"),
    resume=(*CPU_RUN, "eval.test_sentences=4", "eval.dev_sentences=8", "train.export=false"),
    resume_steps=8, curvature=("--iterations", "3", "--batches", "1", "--batch-sentences", "4", "--trace-samples", "1"),
    env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
    # fp16 runs on CPUs only with oneDNN fp16 kernels (tests/conftest.py: needs_fp16)
    low_precision=("ds_configs/zero1_bf16.json", "ds_configs/zero2_bf16.json", "ds_configs/zero3_bf16.json"))


@dataclass
class Step:
    name: str
    passed: bool
    seconds: float
    figures: dict
    notes: list[str]


class Runner:
    """Runs the step processes, keeps their logs, collects the steps."""

    def __init__(self, out: Path, profile: Profile) -> None:
        self.out, self.profile, self.steps = out, profile, []
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def command(self, name: str, args: list[str], timeout: int = 420, stdin: str | None = None) -> str:
        """Runs ``python ARGS`` from the repository root; returns stdout; raises with the log's tail on failure."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.profile.env}
        result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, text=True, capture_output=True,
                                timeout=timeout, input=stdin)
        (self.out / "logs" / f"{name}.log").write_text(f"$ python {' '.join(args)}\n{result.stdout}\n{result.stderr}")
        if result.returncode != 0:
            raise RuntimeError(f"`python {' '.join(args)}` exited {result.returncode}: "
                               f"{(result.stdout + result.stderr)[-1500:]}")
        return result.stdout

    def run(self, name: str, check) -> dict:
        """Runs one step; a step that raises is recorded as failed with the reason."""
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            passed, figures, notes = check(self)
        except Exception as error:   # the report must say what failed and go on to the next step
            passed, figures, notes = False, {}, [f"{type(error).__name__}: {error}"]
        step = Step(name, passed, time.monotonic() - started, figures, notes)
        self.steps.append(step)
        print(f"   {'passed' if passed else 'FAILED'} in {step.seconds:.0f} s; " + "; ".join(notes), flush=True)
        return figures


# ----------------------------------------------------------------------------------------------
# steps


def environment(runner: Runner) -> tuple[bool, dict, list[str]]:
    code = ("import json, platform, torch, deepspeed, transformers\n"
            "from cats_ds.tools.gpu_check import matrix_tflops\n"
            "from cats_ds import placement\n"
            "cuda = torch.cuda.is_available() and placement.on_gpu()\n"
            "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,"
            " 'cuda': torch.version.cuda, 'deepspeed': deepspeed.__version__,"
            " 'transformers': transformers.__version__, 'device': str(placement.device()),"
            " 'device_name': torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),"
            " 'matrix_tflops': matrix_tflops(cuda)}))")
    figures = json.loads(runner.command("environment", ["-c", code]).strip().splitlines()[-1])
    on_gpu = figures["device"].startswith("cuda")
    wanted = runner.profile.name == "gpu"
    notes = [f"{figures['device_name']} ({figures['device']}), torch {figures['torch']} CUDA {figures['cuda']}, "
             f"DeepSpeed {figures['deepspeed']}, {figures['matrix_tflops']:.3g} TFLOP/s measured"]
    if on_gpu != wanted:
        notes.append(f"the training device is {figures['device']}, the profile wants {runner.profile.device}")
    return on_gpu == wanted, figures, notes


def matrix_tflops(cuda: bool) -> float:
    """The device's matrix rate: bf16 8192^3 products on a GPU (mean of 10 after 3 warm-ups), fp32 512^3 on CPU."""
    import torch
    size, dtype, device = (8192, torch.bfloat16, "cuda") if cuda else (512, torch.float32, "cpu")
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    return 10 * 2 * size ** 3 / (time.perf_counter() - started) / 1e12


def exactness(runner: Runner) -> tuple[bool, dict, list[str]]:
    out = runner.out / "exactness.json"
    runner.command("exactness", ["tests/dist/cats_exactness.py", str(out), "1", "2", "3", "--configs",
                                 *runner.profile.low_precision])
    errors = json.loads(out.read_text())["errors"]
    notes, passed = [], errors["reference_alpha_moved"] > 1e-3
    for stage, stage_errors in errors["stages"].items():
        worst = max(stage_errors[run][key] for run in ("cats_vs_reference", "weights_vs_reference")
                    for key in ("grams", "params", "alpha"))
        against_plain = max(stage_errors["ones_vs_plain"], stage_errors["realized_vs_plain"])
        ok = against_plain <= 1e-6 and stage_errors["plain_moved"] > 1e-3 and worst <= EXACTNESS_TOLERANCE
        passed &= ok
        notes.append(f"ZeRO-{stage} fp32: scales at 1 and weights at the realized shares vs plain "
                     f"{against_plain:.1e}, CATS (scales, weights) vs dense float64 {worst:.1e} "
                     f"({'ok' if ok else 'FAILED'})")
    for path, config_errors in errors["configs"].items():
        ok = config_errors["first_gram"] <= LOW_PRECISION_TOLERANCE and config_errors["finite"]
        passed &= ok
        notes.append(f"{Path(path).stem}: first Gram {config_errors['first_gram']:.1e} (<= {LOW_PRECISION_TOLERANCE}), "
                     f"params vs reference {config_errors['params']:.1e} ({'ok' if ok else 'FAILED'})")
    return passed, errors, notes


def throughput(runner: Runner, peak_tflops: float) -> tuple[bool, dict, list[str]]:
    profile, rows, notes, passed = runner.profile, [], [], True
    for index, (stage, overrides) in enumerate(profile.bench_runs):
        out = runner.out / f"bench_{index}.json"
        runner.command(f"bench_{index}", ["-m", "cats_ds.tools.bench", "--config", profile.bench_config, "--stage",
                                          str(stage), "--precision", "bf16", *profile.bench_args,
                                          "--peak-tflops", str(peak_tflops), "--json", str(out), *overrides])
        row = {**json.loads(out.read_text())[0], "overrides": list(overrides)}
        rows.append(row)
        # fp32 buffers: one partition per task, and one for h once a dev meta pass has run
        partitions = row["tasks"] + row["meta_buffer"]
        expected = partitions * row["partition_elements"] * 4 / 2 ** 20
        buffers_ok = abs(row["cats_buffer_mib"] - expected) <= 1e-6 * expected
        passed &= buffers_ok
        notes.append(f"ZeRO-{stage}{' ' + ' '.join(overrides) if overrides else ''}: CATS/plain {row['ratio']:.3f}, "
                     f"MFU plain {100 * row['plain_mfu']:.1f}% CATS {100 * row['cats_mfu']:.1f}%, buffers "
                     f"{row['cats_buffer_mib']:.1f} MiB = {'(N+1)' if row['meta_buffer'] else 'N'} x partition: "
                     f"{'yes' if buffers_ok else 'NO'}")
    zero2 = next(row for row in rows if row["stage"] == 2)
    notes.append(f"target CATS/plain <= {RATIO_TARGET} on ZeRO-2: {'met' if zero2['ratio'] <= RATIO_TARGET else 'not met'}")
    return passed, {"runs": rows}, notes


def bible(runner: Runner) -> tuple[bool, dict, list[str]]:
    run_dir = runner.out / "bible"
    runner.command("bible", ["-m", "cats_ds.train", *runner.profile.bible, f"train.run_dir={run_dir}"], timeout=480)
    results = json.loads((run_dir / "results.json").read_text())
    table = (run_dir / "results.md").read_text()
    exported = (run_dir / "export" / "config.json").exists()
    figures = {key: results.get(key) for key in ("step", "bleu_low", "bleu_high", "chrf_low", "chrf_high")}
    return exported, {**figures, "results_md": table}, [
        f"{results['step']} steps; BLEU high {results.get('bleu_high', float('nan')):.2f}, low "
        f"{results.get('bleu_low', float('nan')):.2f}; export {'written' if exported else 'MISSING'}"]


def translate(runner: Runner) -> tuple[bool, dict, list[str]]:
    run_dir = runner.out / "bible"
    results = json.loads((run_dir / "results.json").read_text())
    direction = (results["low_resource_directions"] or sorted(results["test"]))[0]
    sources = test_sources(run_dir, direction)
    expected = (run_dir / "hypotheses" / f"test.{direction}.txt").read_text().splitlines()[:len(sources)]
    started = time.monotonic()
    output = runner.command("translate", ["-m", "cats_ds.translate", str(run_dir / "export"), "--tgt",
                                          direction.split("-")[1], "--device", runner.profile.device],
                            stdin="\n".join(sources) + "\n")
    seconds = time.monotonic() - started
    translations = output.splitlines()[-len(sources):]
    agreement = sum(a == b for a, b in zip(translations, expected)) / len(sources)
    return agreement >= 0.9, {"direction": direction, "sentences": len(sources), "agreement": agreement,
                              "seconds": seconds, "examples": list(zip(sources[:3], translations[:3]))}, [
        f"{direction}: {100 * agreement:.0f}% of {len(sources)} translations equal the run's own test "
        "hypotheses (>= 90% wanted: batches differ, so rare low-precision ties may not)"]


def test_sources(run_dir: Path, direction: str, count: int = 16) -> list[str]:
    """The first test source sentences of ``direction``, from the run's prepared corpus."""
    data = load_config(run_dir / "config.yaml").data
    corpus = data.cache_root() / "prepared" / data.key() / "corpus"
    if data.source == "local":
        corpus = Path(data.local_dir)
    lines = (corpus / f"test.{direction}.tsv").read_text(encoding="utf-8").splitlines()[:count]
    return [line.split("\t")[0] for line in lines]


def curvature(runner: Runner) -> tuple[bool, dict, list[str]]:
    run_dir = runner.out / "bible"
    runner.command("curvature", ["-m", "cats_ds.tools.curvature", str(run_dir), "--device", runner.profile.device,
                                 *runner.profile.curvature])
    result = json.loads((run_dir / "curvature.json").read_text())
    values = [entry["top_eigenvalue"] for entry in result["tasks"].values()]
    finite = all(value == value and abs(value) != float("inf") for value in values)
    return finite, result, [f"top eigenvalues {', '.join(f'{v:.3g}' for v in values)}"]


def resume(runner: Runner) -> tuple[bool, dict, list[str]]:
    profile, half = runner.profile, runner.profile.resume_steps // 2
    whole, stopped = runner.out / "resume_whole", runner.out / "resume_stopped"
    runner.command("resume_whole", ["-m", "cats_ds.train", *profile.resume, f"train.run_dir={whole}",
                                    f"train.max_steps={profile.resume_steps}"])
    runner.command("resume_first_half", ["-m", "cats_ds.train", *profile.resume, f"train.run_dir={stopped}",
                                         f"train.max_steps={half}"])
    runner.command("resume_second_half", ["-m", "cats_ds.train", *profile.resume, f"train.run_dir={stopped}",
                                          f"train.max_steps={profile.resume_steps}"])
    losses = [train_losses(run_dir) for run_dir in (whole, stopped)]
    steps = sorted(step for step in losses[0] if step > half)
    difference = max(abs(losses[0][step] - losses[1][step]) for step in steps)
    # the CPU is bitwise deterministic; GPU kernels that add with atomics are not, hence the bound there
    bound = 0.0 if profile.name == "cpu" else 1e-3
    return difference <= bound and len(steps) == profile.resume_steps - half, {"max_loss_difference": difference}, [
        f"steps {half + 1}-{profile.resume_steps} after resuming at {half}: largest |loss difference| against "
        f"the uninterrupted run {difference:.2e} (<= {bound:g} wanted)"]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss of the last record of that step (a resumed run may repeat steps)."""
    return {record["step"]: record["loss"] for record in read_metrics(run_dir / "metrics.jsonl", "train")}


# ----------------------------------------------------------------------------------------------
# report


def report_markdown(runner: Runner, started: datetime.datetime, command: str) -> str:
    env = next((s.figures for s in runner.steps if s.name == "environment"), {})
    lines = [f"# GPU check ({runner.profile.name} profile)", "",
             f"`{command}`, started {started:%Y-%m-%d %H:%M} UTC on {platform.node()}: "
             f"{env.get('device_name', '?')}, Python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda', '?')}, DeepSpeed {env.get('deepspeed', '?')}, "
             f"transformers {env.get('transformers', '?')}.", "",
             "| step | result | seconds | what it measured |", "|---|---|---:|---|"]
    for step in runner.steps:
        lines.append(f"| {step.name} | {'passed' if step.passed else '**FAILED**'} | {step.seconds:.0f} | "
                     f"{'<br>'.join(note.replace('|', '/') for note in step.notes)} |")
    lines += throughput_table(runner)
    bible_step = next((s for s in runner.steps if s.name == "bible" and s.figures), None)
    if bible_step:
        lines += ["", "## The short Bible run", "", bible_step.figures["results_md"].strip()]
    return "\n".join(lines) + "\n"


def throughput_table(runner: Runner) -> list[str]:
    step = next((s for s in runner.steps if s.name == "throughput" and s.figures), None)
    if step is None:
        return []
    lines = ["", "## Throughput (bf16, one process)", "",
             "| ZeRO | model | params | plain s/step | CATS s/step | CATS/plain | plain tokens/s | CATS tokens/s "
             "| plain MFU | CATS MFU | plain peak MiB | CATS peak MiB | CATS buffers MiB |",
             "|---:|---|---:|" + "---:|" * 10]
    for row in step.figures["runs"]:
        lines.append(f"| {row['stage']} | {' '.join(row['overrides']) or 'preset'} | {row['parameters']:,} | "
                     f"{row['plain_step_s']:.3f} | {row['cats_step_s']:.3f} | {row['ratio']:.3f} | "
                     f"{row['plain_tokens_per_s']:.0f} | {row['cats_tokens_per_s']:.0f} | "
                     f"{100 * row['plain_mfu']:.1f}% | {100 * row['cats_mfu']:.1f}% | "
                     f"{row['memory']['plain']['peak_mib']:.0f} | {row['memory']['cats']['peak_mib']:.0f} | "
                     f"{row['cats_buffer_mib']:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the dry run: the same steps on the tiny preset, on CPU")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="report directory")
    parser.add_argument("--only", nargs="+", choices=STEPS[1:],
                        help="run these steps after environment (translate and curvature read the bible step's run)")
    args = parser.parse_args(argv)
    profile = CPU if args.cpu else GPU
    out = args.out.resolve()
    runner = Runner(out, profile)
    started = datetime.datetime.now(datetime.timezone.utc)
    env = runner.run("environment", environment)
    steps = {"exactness": exactness, "throughput": lambda r: throughput(r, env.get("matrix_tflops", float("nan"))),
             "bible": bible, "translate": translate, "curvature": curvature, "resume": resume}
    for name, check in steps.items():
        if not args.only or name in args.only:
            runner.run(name, check)
    command = " ".join(["launch/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])])
    (out / "report.md").write_text(report_markdown(runner, started, command))
    (out / "report.json").write_text(json.dumps({"profile": profile.name, "command": command,
                                                 "started": started.isoformat(),
                                                 "steps": [vars(step) for step in runner.steps]}, indent=2))
    failed = [step.name for step in runner.steps if not step.passed]
    print(f"report: {out / 'report.md'}; " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
