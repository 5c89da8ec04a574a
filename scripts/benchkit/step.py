"""Train + util: training step throughput against smp, and GFLOP/s over a matmul's."""

from __future__ import annotations

import time

import torch

from .common import (
    Row,
    Section,
    Settings,
    fmt,
    load_smp,
    log,
    median,
    paired_ratio,
    random_batch,
    rotate,
    sync,
    verdict,
)


class StepRunner:
    """One model's training step: zero_grad, forward, BCEWithLogits, backward, Adam step."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        channels_last: bool,
        device: torch.device,
        st: Settings,
        cpu_bf16: bool = False,
    ) -> None:
        from fissure.runtime import autocast_for

        self.name, self.device = name, device
        self.model = model.to(device).train()
        fmt_ = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt_)
        x, y = random_batch(st.batch, st.size, fmt_)
        self.x, self.y = x.to(device), y.to(device)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.autocast = lambda: autocast_for(device, True)
        if cpu_bf16:  # what fissure does not do on the CPU, measured to show why
            self.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        self.flops = 0

    def forward_backward(self) -> torch.Tensor:
        with self.autocast():
            out = self.model(self.x)
        loss = self.loss_fn(out.float(), self.y)
        loss.backward()
        return loss

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_backward()
        self.opt.step()
        return loss.item()

    def count_flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        self.opt.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            self.forward_backward()
        self.opt.zero_grad(set_to_none=True)
        self.flops = int(counter.get_total_flops())
        return self.flops


def matmul_gflops(n: int, reps: int, device: torch.device) -> float:
    """Median GFLOP/s of an n x n matmul in the training dtype (fp32 on CPU)."""
    dtype = torch.float32  # the training steps run under autocast_for: bf16/fp16 on CUDA only
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / median(times) / 1e9


def build_train_runners(st: Settings, device: torch.device, notes: list[str]) -> list[StepRunner]:
    from fissure.model import ResNetUNet

    torch.manual_seed(0)
    runners = [
        StepRunner("fissure contiguous", ResNetUNet(), False, device, st),
        StepRunner("fissure channels_last", ResNetUNet(), True, device, st),
    ]
    if device.type == "cpu":
        runners.append(
            StepRunner("fissure channels_last bf16", ResNetUNet(), True, device, st, True)
        )
    smp = load_smp()
    if smp is None:
        notes.append(
            "segmentation_models_pytorch is not installed: the smp comparison is "
            "skipped (pip install -e '.[bench]')."
        )
    else:
        for cl in (False, True):
            model = smp.Unet("resnet34", encoder_weights=None, classes=1)
            name = "smp contiguous" if not cl else "smp channels_last"
            runners.append(StepRunner(name, model, cl, device, st))
    return runners


def bench_train(st: Settings, device: torch.device, want_util: bool) -> tuple[Section, Section]:
    sec = Section("train")
    util = Section("util")
    runners = build_train_runners(st, device, sec.notes)
    for r in runners:
        r.count_flops()
    step_times: dict[str, list[float]] = {r.name: [] for r in runners}
    mm: list[float] = []
    utils: dict[str, list[float]] = {r.name: [] for r in runners}
    ratios: dict[str, list[float]] = {r.name: [] for r in runners}
    for rep in range(st.reps + 1):
        rep_times = {}
        for r in rotate(runners, rep):
            sync(device)
            t = time.perf_counter()
            for _ in range(st.steps):
                r.step()
            sync(device)
            rep_times[r.name] = (time.perf_counter() - t) / st.steps
        peak = matmul_gflops(st.matmul_n, st.matmul_reps, device)
        label = "warm-up" if rep == 0 else f"rep {rep}/{st.reps}"
        log(
            f"train {label}: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in rep_times.items())
            + f"; matmul {peak:.0f} GFLOP/s"
        )
        if rep == 0:
            continue
        mm.append(peak)
        for r in runners:
            step_times[r.name].append(rep_times[r.name])
            utils[r.name].append(r.flops / rep_times[r.name] / 1e9 / peak)
            base = "smp contiguous" if "smp contiguous" in rep_times else None
            if base:
                ratios[r.name].append(rep_times[base] / rep_times[r.name])

    rates = {r.name: st.batch / median(step_times[r.name]) for r in runners}
    sec.raw = {
        "batch": st.batch,
        "size": st.size,
        "steps_per_rep": st.steps,
        "reps": st.reps,
        "step_seconds": step_times,
        "images_per_s": rates,
        "gflop_per_step": {r.name: r.flops / 1e9 for r in runners},
        "ratio_vs_smp_contiguous_per_rep": ratios,
    }
    what = f"training step, {st.size}x{st.size}, batch {st.batch}, images/s"
    have_smp = "smp contiguous" in rates
    for name in ("fissure contiguous", "fissure channels_last"):
        if have_smp:
            ratio = median(ratios[name])
            sec.rows.append(
                Row(
                    "train",
                    f"{what} ({name} vs smp contiguous)",
                    fmt(rates[name]),
                    fmt(rates["smp contiguous"]),
                    f"{ratio:.2f}x",
                    ">= 1.0x",
                    verdict(ratio, 1.0),
                )
            )
        else:
            sec.rows.append(
                Row(
                    "train",
                    f"{what} ({name})",
                    fmt(rates[name]),
                    "smp absent",
                    "n/a",
                    ">= 1.0x",
                    "not measured",
                )
            )
    if "fissure channels_last bf16" in rates:
        ratio = paired_ratio(step_times["fissure channels_last"],
                             step_times["fissure channels_last bf16"])
        sec.rows.append(
            Row(
                "train",
                f"{what} (fissure channels_last: CPU bf16 autocast vs fp32)",
                fmt(rates["fissure channels_last bf16"]),
                fmt(rates["fissure channels_last"]),
                f"{ratio:.2f}x",
                "info",
                "-",
            )
        )
    if have_smp:
        ratio = paired_ratio(step_times["smp channels_last"], step_times["fissure channels_last"])
        sec.rows.append(
            Row(
                "train",
                f"{what} (both channels_last)",
                fmt(rates["fissure channels_last"]),
                fmt(rates["smp channels_last"]),
                f"{ratio:.2f}x",
                ">= 1.0x",
                verdict(ratio, 1.0),
            )
        )
    fastest = {name: min(t) for name, t in step_times.items()}
    if have_smp:
        sec.notes.append(
            "Robustness check, ratio of the fastest step of each over all repetitions: "
            + ", ".join(
                f"{name} {fastest['smp contiguous'] / fastest[name]:.2f}x"
                for name in ("fissure contiguous", "fissure channels_last")
            )
            + f" vs smp contiguous; both channels_last "
            f"{fastest['smp channels_last'] / fastest['fissure channels_last']:.2f}x."
        )
    sec.raw["fastest_step_seconds"] = fastest
    # Repetitions where the matmul ran near this run's best were the least slowed by other
    # processes; on a shared machine two intra-op threads wait at every barrier for a core.
    quiet = [k for k, m in enumerate(mm) if m >= 0.8 * max(mm)]
    sec.raw["uncontended_reps"] = quiet
    if have_smp and 0 < len(quiet) < len(mm):
        q = {name: [step_times[name][k] for k in quiet] for name in step_times}

        def qratio(a: str, b: str) -> float:
            return paired_ratio(q[a], q[b])

        sec.notes.append(
            f"Only the {len(quiet)} of {len(mm)} least contended repetitions (matmul >= 80 % of "
            f"this run's best, {max(mm):.0f} GFLOP/s): "
            f"fissure contiguous {qratio('smp contiguous', 'fissure contiguous'):.2f}x, "
            f"fissure channels_last {qratio('smp contiguous', 'fissure channels_last'):.2f}x vs "
            f"smp contiguous; both channels_last "
            f"{qratio('smp channels_last', 'fissure channels_last'):.2f}x; fissure "
            f"{st.batch / median(q['fissure channels_last']):.2f} img/s channels_last."
        )
    cl_gain = paired_ratio(step_times["fissure contiguous"], step_times["fissure channels_last"])
    sec.notes.append(
        "GFLOP per training step (FlopCounterMode, forward+backward): "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ((r.name, r.flops) for r in runners))
        + f"; channels_last speeds fissure up {cl_gain:.2f}x over contiguous."
    )

    util.raw = {"matmul_n": st.matmul_n, "matmul_gflops": mm, "utilisation": utils}
    peak = median(mm)
    for name in ("fissure channels_last", "fissure contiguous", "smp contiguous"):
        if name not in utils:
            continue
        u = median(utils[name])
        gflops = [r for r in runners if r.name == name][0].flops / median(step_times[name]) / 1e9
        target = ">= 0.5" if device.type == "cpu" else "info"
        v = verdict(u, 0.5) if device.type == "cpu" else "info"
        util.rows.append(
            Row(
                "util",
                f"training GFLOP/s over {st.matmul_n}^2 matmul GFLOP/s ({name})",
                f"{gflops:.0f} GFLOP/s",
                f"{peak:.0f} GFLOP/s",
                f"{u:.2f}",
                target,
                v,
            )
        )
    if 0 < len(quiet) < len(mm):
        parts = []
        for name in ("fissure channels_last", "fissure contiguous", "smp contiguous"):
            if name in utils:
                parts.append(f"{name} {median([utils[name][k] for k in quiet]):.2f}")
        util.notes.append(
            f"Utilisation over the {len(quiet)} least contended repetitions only: "
            + ", ".join(parts)
            + "; contention slows the many short parallel regions of a training step far more "
            "than one long matmul."
        )
    if not want_util:
        util.rows.clear()
        util.notes.clear()
    return sec, util


def profile_train_step(st: Settings, device: torch.device, top: int = 15) -> str:
    """torch.profiler table of one fissure channels_last training step (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    from fissure.model import ResNetUNet

    runner = StepRunner("fissure channels_last", ResNetUNet(), True, device, st)
    runner.step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        runner.step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)
