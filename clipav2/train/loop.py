"""`clipav2 train`: run a recipe's stages in order, resuming where RUN_DIR stopped.

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/checkpoints/<stage>/   resumable checkpoints of the stage in progress
    RUN_DIR/<stage>.safetensors    a finished stage's full fp32 weights (+ its ledger snapshot)
    RUN_DIR/metrics.jsonl, eval.jsonl, ledger.json, tensorboard/

A stage is done when its .safetensors exists; the first stage that is not resumes from its newest
good checkpoint, or starts from the previous stage's weights (`stages.enter_stage` resizes them).
The loop never branches on the engine: it drives the stage's `TrainStep` (clipav2.train.step).
"""
from __future__ import annotations

import contextlib
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from clipav2 import exitcodes
from clipav2.config import ConfigError, to_dict
from clipav2.parallel.env import any_rank
from clipav2.train.metrics import (JsonlWriter, MetricsLogger, compute_line, expected_line, quiet_library_warnings,
                                   stage_header)
from clipav2.train.skipcount import describe_skipped, summed_over_ranks
from clipav2.train.stages import build_stage_model, stage_weights


def _say(world, msg: str) -> None:
    if world.is_main:
        print(msg, flush=True)


def _barrier(world) -> None:
    if world.distributed:
        dist.barrier()


def prepare_demo_data(cfg, world) -> None:
    """`data.demo`: generate the demo set into RUN_DIR/demo_data once (main rank), point the
    config at it. Offline and deterministic from the seed."""
    root = Path(cfg.run_dir) / "demo_data"
    if world.is_main and not (root / "eval" / "manifest.json").is_file():
        from clipav2.data.demo import write_demo

        t = time.perf_counter()
        print(f"generating the demo data set into {root} ...", flush=True)
        write_demo(root, seed=cfg.seed)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    _barrier(world)
    cfg.data.train = cfg.data.train or str(root / "train")
    cfg.data.eval = cfg.data.eval or str(root / "eval")


@dataclass
class _StageRun:
    """One stage in progress: what its steps, logs and saves share."""
    stage: object  # the resolved stage (clipav2.stage.Stage)
    train_step: object  # clipav2.train.step.TrainStep: the engine and the step's state
    ckpt: object
    loader: object
    periodic: object
    step: int = 0
    skipped_steps: int = 0
    last_loss: float = 0.0  # of the last log interval: a stage ending on a non-finite loss diverged
    fit: dict | None = None  # micro_batch: auto, the fitted micro-batch (clipav2.micro_batch)
    make_loader: object = None  # stage -> the loader at the stage's start (the trial may rebuild it)


class Trainer:
    def __init__(self, cfg, world):
        from clipav2.cost.guard import BudgetGuard
        from clipav2.cost.plan import stage_flops
        from clipav2.accelerators import resolve
        from clipav2.parallel.env import device_name

        self.cfg, self.world = cfg, world
        self.run_dir = Path(cfg.run_dir)
        self.accel, self.price = resolve(cfg.cost.gpu, cfg.cost.price_per_gpu_hour, device_name(world.device))
        self.flops = {s.name: stage_flops(cfg, i) for i, s in enumerate(cfg.stages)}
        self.guard = BudgetGuard.from_config(cfg.cost) if world.is_main else None
        self.metrics = MetricsLogger(self.run_dir, world.is_main, cfg.log.tensorboard, cfg.log.progress,
                                     cfg.log.progress_seconds, cfg.log.wandb, to_dict(cfg))
        self.evals = JsonlWriter(self.run_dir / "eval.jsonl", world.is_main)
        self.ledger = None
        self.expected_said = False  # the expected time is said once, after the first logged steps
        self.t_start = time.perf_counter()

    # ------------------------------------------------------------------ ledger
    def _open_ledger(self, snapshot) -> None:
        """Main rank: continue the ledger from `snapshot` (a checkpoint's or a finished stage's);
        time logged after it is counted as lost work. Start-up time so far is charged now."""
        if not self.world.is_main or self.ledger is not None:
            return
        from clipav2.cost.ledger import Ledger

        self.ledger = Ledger.resume(snapshot, self.run_dir, gpus=self.world.world_size, price=self.price,
                                    accelerator=self.accel.name)

    def _charge(self, stage: str, kind: str, seconds: float) -> None:
        if self.ledger is not None:
            self.ledger.add(stage, kind, seconds)

    def _timed(self, stage: str, kind: str):
        """Charge the block's wall time to the ledger (main rank), even when the block raises."""
        return self.ledger.track(kind, stage) if self.ledger is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ the run
    def run(self, only_stage=None) -> int:
        names = [s.name for s in self.cfg.stages]
        for index, stage in enumerate(self.cfg.stages):
            if only_stage is not None and stage.name != only_stage:
                continue
            if stage_weights(self.run_dir, stage.name).is_file():
                _say(self.world, f"[{stage.name}] already done ({stage_weights(self.run_dir, stage.name).name}); skipping")
                continue
            if self.ledger is None and index > 0:
                self._open_ledger(self._stage_ledger(names[index - 1]))
            code = self.run_stage(index)
            if code != exitcodes.OK:
                return code
        self.metrics.close()
        if self.world.is_main and self.ledger is not None:
            self.ledger.write(self.run_dir)
            self.print_cost()
        return exitcodes.OK

    def _stage_ledger(self, name: str):
        from clipav2.models.convert import read_metadata

        path = stage_weights(self.run_dir, name)
        return read_metadata(path).get("meta", {}).get("ledger") if path.is_file() else None

    def print_cost(self) -> None:
        s = self.ledger.summary()
        per = ", ".join(f"{n} {v['gpu_hours']:.4f} h ${v['cost_usd']:.2f}" for n, v in s["stages"].items())
        budget = f" of a ${self.cfg.cost.budget_usd:,.2f} budget" if self.cfg.cost.budget_usd else ""
        print(f"cost: {s['gpu_hours']:.4f} GPU-hours ({self.world.world_size} x {self.accel.name} at "
              f"${self.price:g}/h) = ${s['cost_usd']:.2f}{budget} [{per}]; report: clipav2 budget {self.run_dir}", flush=True)

    # ------------------------------------------------------------------ one stage
    def run_stage(self, index: int) -> int:
        run = self._set_up(index)
        if run is None:  # the budget was spent before the first step of a resubmitted run
            return exitcodes.BUDGET
        try:
            code = self._train(run)
        except BaseException:
            run.loader.close()  # its workers ignore SIGTERM: stopped now, or the process's exit would wait on them
            raise
        return code if code is not None else self._end_stage(run)

    def _set_up(self, index: int) -> _StageRun | None:
        """The stage's model, resolved stage, engine, resumed state and loader (None: over budget)."""
        from clipav2.data.loader import host_memory_note
        from clipav2.eval.periodic import PeriodicEval
        from clipav2 import micro_batch
        from clipav2.stage import resolve
        from clipav2.train.checkpoint import CheckpointManager, fingerprint
        from clipav2.train.step import TrainStep

        cfg, world = self.cfg, self.world
        ckpt = CheckpointManager.from_config(cfg, world, root=self.run_dir / "checkpoints" / cfg.stages[index].name)
        has_ckpt = bool(ckpt.complete())
        model = build_stage_model(cfg, index, self.run_dir)
        stage = resolve(cfg, index, world.world_size, arch=model.arch)  # the model it really is
        ckpt.fingerprint = fingerprint(cfg.model.name, stage, model)
        ckpt.check_fingerprints()  # another model's checkpoints: an error, never a silent fresh start
        fit = None
        if stage.auto_micro_batch:  # the largest that fits, found once per stage (RUN_DIR/micro_batch.json)
            fit = micro_batch.fit_micro_batch(cfg, stage, world, self.run_dir)
            stage = stage.with_micro_batch(cfg, fit["micro_batch"])
            _say(world, micro_batch.explain(stage.name, fit))
        train_step = TrainStep(cfg, stage, world, model)
        del model
        loader, extra, make_loader = self._resume(ckpt if has_ckpt else None, train_step)
        self._open_ledger(extra.get("ledger"))
        spent = self.guard.spent_before_start(self.ledger, extra.get("budget_stop")) if self.guard else False
        if any_rank(world, spent):  # checked before the first step of a resubmitted run
            return None
        _say(world, host_memory_note(loader, stage))
        run = _StageRun(stage, train_step, ckpt, loader, PeriodicEval(cfg, stage, world),
                        step=int(extra.get("step", 0)), skipped_steps=int(extra.get("skipped_steps", 0)),
                        fit=fit, make_loader=make_loader)
        _say(world, stage_header(stage, len(cfg.stages), run.step))
        self._charge(stage.name, "startup", time.perf_counter() - self.t_start)
        return run

    def _resume(self, ckpt, train_step):
        """The stage's loader and, from the newest usable checkpoint of `ckpt` (None: a fresh
        stage), the step's state, the loader's position and the RNGs, applied while it loads (a
        state the loader, torch or numpy refuses makes the checkpoint unusable) -> (loader, the
        checkpoint's `extra` or {}, make_loader): `make_loader(stage)` builds the loader again at
        the same start with the RNGs as they were (the micro-batch trial's second try)."""
        from clipav2.data import build_train_loader
        from clipav2.rng import rng_state, set_rng_state
        from clipav2.text import make_text_transform

        cfg, world, stage = self.cfg, self.world, train_step.stage
        text_transform = make_text_transform(stage, vocab=cfg.data.vocab, seed=cfg.seed)
        loader = build_train_loader(cfg, stage, world, text_transform)

        def check(state):
            if state.get("data") is not None:
                loader.load_state_dict(state["data"])
            if state.get("rng"):
                set_rng_state(state["rng"])

        extra = (ckpt.resume(train_step, check) if ckpt is not None else None) or {}
        rng_at_start, data_at_start = rng_state(), extra.get("data")

        def make_loader(stage):
            rebuilt = build_train_loader(cfg, stage, world, text_transform, state=data_at_start)
            set_rng_state(rng_at_start)
            return rebuilt

        return loader, extra, make_loader

    def _save(self, run: _StageRun, budget_stop: float | None = None) -> None:
        from clipav2.rng import rng_state

        stage, step = run.stage, run.step
        with self._timed(stage.name, "checkpoint"):
            state = {"stage": stage.name, "step": step, "samples_seen": step * stage.global_batch,
                     "skipped_steps": run.skipped_steps, "data": run.loader.state_dict(), "rng": rng_state(),
                     "budget_stop": budget_stop}
            if self.ledger is not None:
                self.ledger.set_progress(stage.name, step, step * stage.global_batch)
                state["ledger"] = self.ledger.state_dict()
            run.ckpt.save(run.train_step, step, state)

    def _train(self, run: _StageRun) -> int | None:
        """The stage's steps, with logging, evaluation and checkpoints; an exit code if it stopped early."""
        from clipav2.train.faults import FaultMonitor

        cfg, world, stage = self.cfg, self.world, run.stage
        monitor = FaultMonitor(cfg.faults.max_consecutive_skips, world)
        audit = _KeyAudit(self.run_dir, world.rank) if cfg.log.sample_keys else None
        self.metrics.start_stage(stage.name, stage.steps, run.step, stage.index, run.periodic.offset)
        batches = iter(run.loader)
        window = _Window()
        first_step = run.step
        while run.step < stage.steps:
            t_wait = time.perf_counter()
            micro = [next(batches) for _ in range(stage.grad_accum)]
            t_step = time.perf_counter()
            if audit is not None:
                audit.write(stage.name, run.step, micro)
            if run.step == first_step:  # the stage's first step: the micro-batch's trial, and which kernel ran
                result, micro, batches = self._first_step(run, micro, batches)
                stage = run.stage
            else:
                result = run.train_step.run(micro, run.step)  # device tensors: no host sync here
            t_done = time.perf_counter()
            run.step += 1
            self._charge(stage.name, "data_wait", t_step - t_wait)
            self._charge(stage.name, "train", t_done - t_step)
            window.add(result, t_step - t_wait, run.train_step)
            stop, report = None, None
            if run.step % cfg.log.every_steps == 0 or run.step == stage.steps:
                report = run.train_step.skips.read()  # the interval's one device->host read, with the window's
                run.skipped_steps = report.total
                stop = self._log(run, window)
            code = monitor.after_step(run.step, result, report)
            if code is not None or stop is not None:
                self._save(run, budget_stop=self.guard.limit_usd if stop is not None and self.guard else None)
                self.metrics.close_bar()
                _say(world, monitor.message if code is not None else self.guard_message())
                return code if code is not None else exitcodes.BUDGET
            t_aside = time.perf_counter()  # evaluations and saves are not training: out of samples/s
            if run.periodic.due(run.step, at_log_step=report is not None):
                self._evaluate(stage, run.step, lambda: run.periodic.run(run.train_step.engine), "periodic")
            if run.step < stage.steps and run.ckpt.due(run.step):
                self._save(run)
            window.t0 += time.perf_counter() - t_aside
        self.metrics.close_bar()
        return None

    def _end_stage(self, run: _StageRun) -> int:
        """The final weights (checked finite), the stage-end evaluation and the weights file."""
        from clipav2.train.faults import diverged

        world, stage = self.world, run.stage
        _say(world, f"[{stage.name}] {describe_skipped(summed_over_ranks(world, run.loader.skipped))}")
        t = time.perf_counter()
        full = run.train_step.engine.full_state_dict()
        bad = diverged(full, run.last_loss) if world.is_main else None
        if any_rank(world, bad is not None):
            _say(world, f"[{stage.name}] the stage diverged: {bad}; {stage.name}.safetensors not written, "
                        f"exit {exitcodes.DIVERGED}")
            return exitcodes.DIVERGED
        run.loader.close()
        eval_seconds = self._finish_stage(run, full)  # charged as eval there
        run.train_step = None  # the engine's memory goes before the next stage's
        gc.collect()
        self._charge(stage.name, "checkpoint", max(time.perf_counter() - t - eval_seconds, 0.0))
        if self.ledger is not None:
            self.ledger.write(self.run_dir)
        self.t_start = time.perf_counter()
        return exitcodes.OK

    def _first_step(self, run: _StageRun, micro, batches):
        """The stage's first step, under the profiler to print the attention kernel SDPA really
        chose. Under `micro_batch: auto` it is the fit's trial: an out-of-memory error, or a peak
        above the fit's budget measured before the update, halves the micro-batch (more micro-steps,
        the same global batch; the reason goes to RUN_DIR/micro_batch.json and the log) and the
        step is taken again from the stage's start, with nothing applied: the weights, optimizer
        and data are those of a run started at the smaller size. -> (result, micro, batches)"""
        import torch

        from clipav2.models.kernels import attention_kernels, describe
        from clipav2 import micro_batch as mb
        from clipav2.parallel.apply import compile_seconds

        cuda = self.world.device.type == "cuda"

        def check():  # after the backward, on every rank: the ranks agree on the verdict
            peak = torch.cuda.max_memory_allocated(self.world.device) if cuda else 0
            budget = run.fit["device_bytes"] * (1 - mb.RESERVE)
            if any_rank(self.world, peak > budget):
                raise mb.TrialFailed(f"measured peak above the budget of {budget / 2**30:.1f} GiB "
                                     f"(rank {self.world.rank}: {peak / 2**30:.1f} GiB)")

        compiled, t = compile_seconds(), time.perf_counter()
        while True:
            try:
                with attention_kernels() as ran:
                    result = run.train_step.run(micro, run.step, before_update=check if run.fit else None)
                break
            except (torch.OutOfMemoryError, mb.TrialFailed) as e:
                if run.fit is None or run.train_step.engine.owns_update:  # a configured micro-batch, or DeepSpeed's baked-in one
                    raise
                why = "out of memory" if isinstance(e, torch.OutOfMemoryError) else str(e)
            micro = batches = None  # here, past the handler, the failed step's tensors are gone
            micro, batches = self._halve_micro_batch(run, why)
        _say(self.world, f"attention: {describe(ran)} (model.attention={self.cfg.model.attention})")
        if run.train_step.engine.compiled:  # the blocks compile at their first call: this step
            _say(self.world, f"compile: {compile_seconds() - compiled:.0f} s of the first step's "
                             f"{time.perf_counter() - t:.0f} s (torch.compile, this stage's shapes)")
        if cuda:  # the micro-batch model's trial: what the step really took
            mb.record_trial(self.run_dir, run.stage, self.world, torch.cuda.max_memory_allocated(self.world.device))
        return result, micro, batches

    def _halve_micro_batch(self, run: _StageRun, why: str):
        """Nothing of the failed trial is kept: gradients dropped, the loader rebuilt from the
        stage's start at the halved micro-batch. -> (the step's micro-batches, the iterator)"""
        from clipav2 import micro_batch as mb

        train_step = run.train_step
        train_step.optimizer.zero_grad(set_to_none=True)
        if hasattr(train_step.engine.model, "reshard"):  # FSDP2: parameters may be gathered when the error came
            train_step.engine.model.reshard()
        run.loader.close()
        mb.release_device_memory(self.world.device)
        run.fit = mb.halve(self.run_dir, run.stage, self.world, run.fit, why)
        run.stage = train_step.stage = run.stage.with_micro_batch(self.cfg, run.fit["micro_batch"])
        run.loader = run.make_loader(run.stage)
        batches = iter(run.loader)
        _say(self.world, f"[{run.stage.name}] micro-batch trial: {why}; halved to {run.stage.micro_batch} "
                         f"({run.stage.grad_accum} micro-steps, the same global batch); the step is taken again")
        return [next(batches) for _ in range(run.stage.grad_accum)], batches

    def guard_message(self) -> str:
        return self.guard.message if self.guard is not None else "budget guard: stopped on the main rank's decision"

    def _log(self, run: _StageRun, window) -> str | None:
        """Log (main rank) and ask the budget guard; collective: returns "stop" on every rank or None."""
        from clipav2.cost.projection import project
        from clipav2.cost.mfu import mfu

        world, stop, stage, step = self.world, False, run.stage, run.step
        stats = window.close(step)  # the one device sync of the interval
        run.last_loss = stats["loss"]
        skipped = summed_over_ranks(world, run.loader.skipped)  # every rank's records, by reason
        if world.is_main:
            sps = stats["steps"] * stage.global_batch / max(stats["seconds"], 1e-9)
            self.ledger.set_progress(stage.name, step, step * stage.global_batch)
            projection = project(self.cfg, self.ledger, stage.name, sps, self.flops) if sps > 0 else None
            per_gpu = sps / world.world_size
            peak = self.accel.peak_flops / 1e12 if self.accel.peak_flops else None
            record = {
                "stage": stage.name, "step": step, "samples_seen": step * stage.global_batch,
                "recipe_samples": run.periodic.recipe_samples(step), "loss": stats["loss"], "lr": stats["lr"], "logit_scale": stats["logit_scale"],
                "samples_per_s": sps, "samples_per_s_per_gpu": per_gpu,
                "mfu": mfu(stage.train_flops_per_sample, per_gpu, peak) or 0.0,
                "data_wait_frac": stats["data_wait"] / max(stats["seconds"], 1e-9),
                "gpu_hours": self.ledger.total_gpu_seconds / 3600.0, "cost_usd": self.ledger.total_usd,
                "skipped_samples": int(sum(skipped.values())), "skipped_by_reason": skipped, "skipped_steps": run.skipped_steps,
                "grad_norm": stats["grad_norm"],
                "projected_cost_usd": projection["projected_total_usd"] if projection else None,
                "time": time.time(),
            }
            if projection:  # wall seconds to go: the projection's GPU-hours over the job's GPUs
                wall = {r["name"]: r["gpu_hours_to_go"] * 3600 / world.world_size for r in projection["stages"]}
                record.update(stage_seconds_to_go=wall[stage.name], seconds_to_go=sum(wall.values()))
            self.metrics.log(record, stats["steps"])
            if projection and not self.expected_said:
                self.expected_said = True
                self.metrics.say(expected_line(record, stats["steps"], stage.train_flops_per_sample, projection["overhead_ratio"]))
            self.ledger.write(self.run_dir, projection=projection)
            seconds_per_step = stats["seconds"] / max(stats["steps"], 1)
            to_next = min(run.ckpt.every_steps - step % run.ckpt.every_steps, stage.steps - step) * seconds_per_step
            decision = self.guard.check(self.ledger, record["projected_cost_usd"], to_next)
            stop = decision == "stop"
        return "stop" if any_rank(world, stop) else None

    def _evaluate(self, stage, step: int, run, when: str) -> float:
        """Run an evaluation (`run()`: collective, every rank evaluates its share),
        charge its time to the ledger as eval, and record it (main rank) with the recipe's samples
        seen, GPU-hours and dollars at that point. Returns the seconds it took."""
        from clipav2.eval.periodic import recipe_samples
        from clipav2.eval.run import describe

        t = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - t
        self._charge(stage.name, "eval", seconds)
        if not self.world.is_main:
            return seconds
        self.ledger.set_progress(stage.name, step, step * stage.global_batch)
        record = {"stage": stage.name, "step": step, "samples_seen": step * stage.global_batch,
                  "recipe_samples": recipe_samples(self.cfg, stage.index, step),
                  "gpu_hours": self.ledger.total_gpu_seconds / 3600.0, "cost_usd": self.ledger.total_usd,
                  "when": when, "time": time.time(),
                  **{k: v for part in result.values() for k, v in part.items()}, **result}
        self.evals.write(record)
        self.metrics.log_eval(record)
        self.metrics.say(describe(stage.name, result) + f" at {record['recipe_samples']:,} samples, ${record['cost_usd']:.4g}")
        return seconds

    def _finish_stage(self, run: _StageRun, full: dict) -> float:
        """The stage-end evaluation of the live model, shared by every rank through the engine's
        forward as the periodic one is, then (main rank) the consolidated weights ->
        RUN_DIR/<stage>.safetensors, written even when the evaluation fails. Returns the
        evaluation's seconds."""
        from clipav2.eval.periodic import evaluate_live
        from clipav2.models.convert import build_and_load, save_model
        cfg, world, stage, step = self.cfg, self.world, run.stage, run.step
        eval_seconds = 0.0
        try:
            if cfg.eval.at_stage_end and (cfg.data.eval or cfg.data.retrieval):
                evaluate = lambda: evaluate_live(run.train_step.engine, cfg, stage, world)  # noqa: E731
                eval_seconds = self._evaluate(stage, step, evaluate, "stage_end")
        finally:  # an evaluation that fails must not cost the stage its weights
            if world.is_main:
                model = build_and_load(stage.arch, {k: v.float() for k, v in full.items()})  # the architecture it trained
                self.ledger.set_progress(stage.name, step, step * stage.global_batch)
                save_model(model, stage_weights(self.run_dir, stage.name), stage=stage.name, step=step,
                           ledger=self.ledger.state_dict())
                print(f"[{stage.name}] weights -> {stage_weights(self.run_dir, stage.name)}", flush=True)
        _barrier(world)
        return eval_seconds


class _KeyAudit:
    """Which samples each step saw, per rank (log.sample_keys): lets anyone check that a resumed
    run repeats and skips nothing. A redone step appears again; its last line is the one that counts."""

    def __init__(self, run_dir, rank: int):
        self.path = Path(run_dir) / "samples" / f"rank_{rank}.txt"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, stage: str, step: int, micro_batches) -> None:
        keys = ",".join(k for b in micro_batches for k in b["keys"])
        with self.path.open("a") as f:
            f.write(f"{stage} {step} {keys}\n")


class _Window:
    """Accumulates one log interval on the device (no syncs until `close`)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.t0, self.steps, self.data_wait = time.perf_counter(), 0, 0.0
        self.results, self.scale = [], None

    def add(self, result, data_wait: float, train_step) -> None:
        self.steps += 1
        self.data_wait += data_wait
        self.results.append(result)
        self.scale = train_step.last_scale

    def close(self, step: int) -> dict:
        from clipav2.train.step import to_host

        results = to_host(self.results)  # one device->host copy for the whole interval
        scale = float(self.scale) if self.scale is not None else float("nan")
        out = {"steps": self.steps, "seconds": time.perf_counter() - self.t0, "data_wait": self.data_wait,
               "loss": sum(r.loss for r in results) / max(len(results), 1), "lr": results[-1].lr,
               "grad_norm": results[-1].grad_norm, "logit_scale": scale}
        self.reset()
        return out


def _say_compute(cfg, world) -> None:
    from clipav2.cost.plan import stage_flops
    from clipav2.parallel.env import device_name

    recipe_flops = sum(stage_flops(cfg, i) * s.samples for i, s in enumerate(cfg.stages))
    _say(world, compute_line(device_name(world.device), world.world_size, recipe_flops))


def train(cfg, only_stage=None, fresh: bool = False) -> int:
    """Run the recipe; the process exit code (clipav2.exitcodes). The run's signal handlers
    (clipav2.signals) are in place for its duration only."""
    from clipav2.signals import run_signal_handlers

    with run_signal_handlers():  # once per run: a signal between stages is honoured in the next
        return _train_run(cfg, only_stage, fresh)


def _train_run(cfg, only_stage, fresh: bool) -> int:
    from clipav2.parallel import init_distributed
    from clipav2.train import rundir
    from clipav2.data.stream import NoUsableData
    from clipav2.models.weights_file import WeightsFileError
    from clipav2.train.checkpoint import CheckpointCodeError, IncompatibleCheckpoint, NoSpace, NoUsableCheckpoint
    from clipav2.train.runlock import RunDirBusy, lock_run_dir

    owns_group = not (dist.is_available() and dist.is_initialized())
    world = init_distributed(cfg.parallel)
    quiet_library_warnings()
    lock = None
    try:
        try:
            cfg.validate(world.world_size)  # against the world the launcher really made, before any model
            lock = lock_run_dir(cfg.run_dir, world)  # one run per RUN_DIR, for the whole run
            if fresh:
                rundir.start_fresh(cfg, world)
            _say_compute(cfg, world)  # before the demo data set is generated: that takes a while too
            if cfg.data.demo:
                prepare_demo_data(cfg, world)
            rundir.prepare(cfg, world)  # stale .tmp removed, recipe unchanged, config.yaml written
        except (ConfigError, RunDirBusy, rundir.RecipeChanged) as e:
            if world.is_main:
                print(f"clipav2 train: {e}", file=sys.stderr)
            return exitcodes.CONFIG
        return Trainer(cfg, world).run(only_stage)
    except CheckpointCodeError as e:
        print(f"clipav2 train: {e}", file=sys.stderr)
        return exitcodes.FAILED
    except (IncompatibleCheckpoint, NoSpace, WeightsFileError, NoUsableData, NoUsableCheckpoint) as e:
        if world.is_main or isinstance(e, NoUsableData):  # each rank reads its own shards
            print(f"clipav2 train: {NoUsableData.line(e)}", file=sys.stderr)
        return exitcodes.NO_SPACE if isinstance(e, NoSpace) else exitcodes.CONFIG
    except KeyboardInterrupt:
        print("interrupted: aborted at once, no checkpoint written for the step in progress", file=sys.stderr)
        return exitcodes.INTERRUPTED
    finally:
        if lock is not None:
            lock.release()
        if world.distributed and owns_group:
            dist.destroy_process_group()
