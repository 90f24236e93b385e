"""Quality on synthetic data we control: does fmae learn AUs of unseen subjects, and does
identity-adversarial training (λ > 0) do what the paper claims — less identity in the features
(identity-probe accuracy down) with AU F1 on unseen subjects up or at least holding?

Everything runs through the real CLI (`fmae synth`, `fmae train`, `fmae probe-id`) on synthetic
BP4D-format data with per-subject AU tendencies (`--identity-strength`: how far each subject's AU rates
stray from the dataset's, so identity predicts the labels of the training subjects and nothing about
the unseen test subjects — the shortcut IAT exists to remove). Usage:

    python bench/quality_iat.py [--epochs 8] [--lambdas 0,0.5,2] [--seeds 0,1] [--folds 1]

The paper fine-tunes from an MAE-pretrained encoder (FMAE, FMAE-IAT); `--init CKPT` does so here (a
vit_tiny one comes from bench/pretrain_vs_scratch.py). The run that meets the quality bar:

    python bench/quality_iat.py --frames 300 --epochs 20 --init pretrained.pth --lambdas 0,0.5,2 --seeds 0,1,2

Runs of a sweep can go in parallel processes over one --workdir with --reuse (each process a subset of
--lambdas/--seeds); a last call with the whole sweep and --reuse then only gathers and writes the table.

Every value that differs from the paper's BP4D recipe (`fmae train bp4d --dry-run`) is a command-line
option here and is printed, with the paper's value, in the results file. Prints one table and writes it
to bench/results/quality_iat-<machine>.md; a hand-written section of that file starting at
"## What it took" is kept when the benchmark is run again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import ENV, fmae, fmt, fresh, mean_std, only_run  # noqa: E402

from fmae.run_spec import flatten  # noqa: E402

HERE = Path(__file__).resolve().parent
KEEP_FROM = "## What it took"  # the hand-written part of the results file, kept across runs

# The paper's values (fmae.recipes: BP4D "fmae" fine-tuning, and the identity probe) that options here change.
PAPER_TRAIN = {"blr": 2e-4, "batch_size": 64, "epochs": 20, "warmup_epochs": 2, "layer_decay": 0.65,
               "weight_decay": 0.05, "drop_path": 0.1, "auto_augment": "rand-m9-mstd0.5-inc1",
               "random_erase_prob": 0.25, "crop_scale": 0.08}
PAPER_PROBE = {"blr": 2e-4, "epochs": 20, "frames_per_subject": 100, "train_frames_per_subject": 70}


def sha256_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def finished_run(folder: Path, expect: dict) -> Path | None:
    """The one finished run in `folder` whose run.toml [config] has every value of `expect`, else None."""
    runs = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if len(runs) != 1:
        return None
    run = runs[0]
    try:
        state = json.loads((run / "status.json").read_text())["state"]
        config = flatten(tomllib.loads((run / "run.toml").read_text())["config"])
    except (OSError, ValueError, KeyError):
        return None
    same = all(config.get(k) == v or (isinstance(v, float) and isinstance(config.get(k), (int, float))
                                      and abs(config[k] - v) < 1e-12) for k, v in expect.items())
    return run if state == "done" and same and (run / "summary.json").exists() else None


def run_minutes(run: Path) -> float:
    """Wall minutes from the run's start to its last status update."""
    status = json.loads((run / "status.json").read_text())
    start, end = (datetime.fromisoformat(status[k].replace("Z", "+00:00")) for k in ("started", "updated"))
    return (end - start).total_seconds() / 60


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lambdas", default="0,0.5,2")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--folds", default="1")
    g = p.add_argument_group("data (fmae synth bp4d: 41 subjects)")
    g.add_argument("--frames", type=int, default=100, help="frames per subject")
    g.add_argument("--size", type=int, default=64)
    g.add_argument("--identity-strength", type=float, default=0.75)
    g.add_argument("--nuisance", type=float, default=0.3, help="pose/lighting/noise jitter, 0..1")
    g = p.add_argument_group("fine-tuning (vit_tiny; the paper's BP4D recipe otherwise)")
    g.add_argument("--init", type=Path, default=None,
                   help="MAE checkpoint to fine-tune from, as the paper's FMAE / FMAE-IAT do (for vit_tiny, "
                   "bench/pretrain_vs_scratch.py leaves one at <workdir>/runs/pretrain/*/checkpoints/pretrained.pth); "
                   "default: random init")
    g.add_argument("--epochs", type=int, default=25)
    g.add_argument("--blr", type=float, default=5e-3)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--warmup", type=float, default=1)
    g.add_argument("--layer-decay", type=float, default=1.0)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--drop-path", type=float, default=0.0)
    g.add_argument("--auto-augment", default="", help='"" = no RandAugment (paper: rand-m9-mstd0.5-inc1)')
    g.add_argument("--random-erase-prob", type=float, default=0.0)
    g.add_argument("--crop-scale", type=float, default=1.0,
                   help="RandomResizedCrop's smallest area share (paper 0.08: on 64 px synthetic faces a vit_tiny "
                   "from scratch learned nothing in 30 epochs with it; 1.0 without crops learned)")
    g = p.add_argument_group("identity probe (frozen encoder, linear layer)")
    g.add_argument("--probe-checkpoint", default="last", choices=("last", "best"),
                   help="which checkpoint of each run to probe (last: the final model, as the F1 columns)")
    g.add_argument("--probe-epochs", type=int, default=10)
    g.add_argument("--probe-blr", type=float, default=5e-3)
    g.add_argument("--probe-frames", type=int, default=40,
                   help="frames per subject, split 70/30 (subjects with fewer use all theirs)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of each fmae process (OMP_NUM_THREADS; the data loader worker uses another core). "
                   "1 keeps a 2-core machine from oversubscribing: with 2, any other load on the machine cut "
                   "vit_tiny training from ~300 to ~20 images/s here")
    p.add_argument("--reuse", action="store_true",
                   help="keep a finished run (and its probe) already in the workdir when its run.toml has exactly "
                   "these settings, instead of training it again: lets parts of a sweep run as parallel processes "
                   "(--lambdas/--seeds subsets), then one call with the whole sweep writes the table")
    p.add_argument("--workdir", type=Path, default=HERE / ".quality_iat")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    lambdas = [float(x) for x in args.lambdas.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    folds = [int(x) for x in args.folds.split(",")]
    work = args.workdir
    if args.threads > 0:
        ENV["OMP_NUM_THREADS"] = str(args.threads)
    start, load0 = time.perf_counter(), os.getloadavg()[0]

    data = work / f"bp4d-f{args.frames}-s{args.size}-id{args.identity_strength:g}-n{args.nuisance:g}"
    if not (data / "synth.json").exists():
        fmae("synth", "bp4d", "--out", data, "--frames", args.frames, "--size", args.size, "--seed", 0,
             "--identity-strength", args.identity_strength, "--nuisance", args.nuisance)
    common = ["--root", data, "--labels", data / "labels.jsonl", "--quiet"]
    workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    train = {"blr": args.blr, "batch_size": args.batch_size, "epochs": args.epochs, "warmup_epochs": args.warmup,
             "layer_decay": args.layer_decay, "weight_decay": args.weight_decay, "drop_path": args.drop_path,
             "auto_augment": args.auto_augment, "random_erase_prob": args.random_erase_prob,
             "crop_scale": args.crop_scale}
    train_sets = [f"{k}={fmt(v)}" for k, v in train.items() if k not in ("batch_size", "epochs")]
    train_sets += [f"num_workers={workers}", "log_every=1000"]
    per_subject = args.probe_frames
    probe = {"blr": args.probe_blr, "epochs": args.probe_epochs, "frames_per_subject": per_subject,
             "train_frames_per_subject": int(round(per_subject * 0.7))}
    probe_sets = [f"{k}={fmt(v)}" for k, v in probe.items() if k != "epochs"] + [f"num_workers={workers}",
                                                                                 "log_every=1000"]

    init_args = ["--init", args.init] if args.init else []
    init_text = (f"from the MAE checkpoint `{args.init}` (sha256 {sha256_prefix(args.init)}…)" if args.init
                 else "from a random init (no MAE pretraining)")
    keys = ("f1_05_last", "f1_best_last", "auc_last", "f1_05_best", "trivial", "probe", "chance", "minutes")
    rows: dict[float, dict[str, list[float]]] = {lam: {k: [] for k in keys} for lam in lambdas}
    paired: dict[tuple[int, int, float], dict[str, float]] = {}
    log_lines: list[str] = []
    reused: list[str] = []
    for fold in folds:
        for seed in seeds:
            for lam in lambdas:
                tick = time.perf_counter()
                tag = f"f{fold}-s{seed}-l{lam:g}"
                expect = {**train, "epochs": args.epochs, "lambda_id": lam, "seed": seed, "fold": fold,
                          "data_root": str(data.resolve()), "init": str(args.init.resolve()) if args.init else ""}
                run = finished_run(work / "runs" / tag, expect) if args.reuse else None
                if run is None:
                    runs = fresh(work / "runs" / tag)
                    fmae("train", "bp4d", "--fold", fold, "--seed", seed, "--lambda-id", lam, "--model", "vit_tiny",
                         "--epochs", args.epochs, "--batch-size", args.batch_size,
                         *init_args, *[x for s in train_sets for x in ("--set", s)], "--runs-dir", runs, *common)
                    run = only_run(runs)
                else:
                    reused.append(tag)
                summary = json.loads((run / "summary.json").read_text())
                best, last = summary["best"], summary["last"]
                labels = np.load(run / "predictions" / "best.npz")["labels"].astype(float)
                rate = labels.mean(0)
                trivial = float(np.mean(2 * rate / (1 + rate)))  # F1 of predicting every AU present
                probe_expect = {**probe, "epochs": args.probe_epochs, "seed": seed, "source_run": run.name,
                                "init": str((run / "checkpoints" / f"{args.probe_checkpoint}.pt").resolve())}
                probe_run = finished_run(work / "probes" / tag, probe_expect) if args.reuse else None
                if probe_run is None:
                    probes = fresh(work / "probes" / tag)
                    fmae("probe-id", run, "--dataset", "bp4d", "--checkpoint", args.probe_checkpoint, "--seed", seed,
                         "--epochs", args.probe_epochs,
                         *[x for s in probe_sets for x in ("--set", s)], "--runs-dir", probes, *common)
                    probe_run = only_run(probes)
                pr = json.loads((probe_run / "summary.json").read_text())["best"]
                minutes = run_minutes(run) + run_minutes(probe_run)
                got = rows[lam]
                for key, value in (("f1_05_last", last["f1_05_mean"]), ("f1_best_last", last["f1_best_mean"]),
                                   ("auc_last", last["auc_mean"]), ("f1_05_best", best["f1_05_mean"]),
                                   ("trivial", trivial), ("probe", pr["accuracy"]), ("chance", pr["chance"]),
                                   ("minutes", minutes)):
                    got[key].append(value)
                paired[(fold, seed, lam)] = {"f1": last["f1_05_mean"], "auc": last["auc_mean"], "probe": pr["accuracy"]}
                line = (f"fold {fold} seed {seed} λ={lam:g}: F1@0.5 last {last['f1_05_mean']:.3f} (trivial "
                        f"{trivial:.3f}), F1 best-threshold {last['f1_best_mean']:.3f}, AUC {last['auc_mean']:.3f}, "
                        f"ID probe {pr['accuracy']:.3f}; {minutes:.1f} min")
                log_lines.append(line)
                print(line, flush=True)
    minutes = (time.perf_counter() - start) / 60
    n = len(folds) * len(seeds)
    changed_train = [f"{k} {fmt(v)} (paper {fmt(PAPER_TRAIN[k])})" for k, v in train.items() if v != PAPER_TRAIN[k]]
    changed_probe = [f"{k} {fmt(v)} (paper {fmt(PAPER_PROBE[k])})" for k, v in probe.items() if v != PAPER_PROBE[k]]
    lines = [
        f"# Quality on synthetic BP4D: FMAE vs FMAE-IAT (vit_tiny {'MAE-pretrained' if args.init else 'from scratch'}, CPU)",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{minutes:.1f} minutes in all; OMP_NUM_THREADS={ENV.get('OMP_NUM_THREADS', 'unset')}; load average at the "
        f"start {load0:.1f}, at the end {os.getloadavg()[0]:.1f} (other jobs on the machine slow the runs down)",
        "",
        f"command: `{shlex.join(['python', 'bench/quality_iat.py', *sys.argv[1:]])}`",
        "",
        f"- data: `fmae synth bp4d`, 41 subjects × {args.frames} frames, {args.size} px, identity strength "
        f"{args.identity_strength:g}, nuisance {args.nuisance:g}, seed 0; test = the unseen subjects of fold(s) "
        f"{folds}; seeds {seeds} (n = {n} per row, mean ± std)",
        f"- fine-tuning: `fmae train bp4d --model vit_tiny` {init_text}, input "
        f"{args.size} px; the paper's BP4D recipe except: {'; '.join(changed_train) or 'nothing'}",
        f"- identity probe: `fmae probe-id --checkpoint {args.probe_checkpoint}` on each run (frozen encoder, linear layer over all "
        f"41 subjects, frames split 70/30 per subject); the paper's protocol except: "
        f"{'; '.join(changed_probe) or 'nothing'}",
        "- trivial = F1 of predicting every AU present on the test split (mean over AUs of 2p/(1+p))",
        "",
        "| λ | F1@0.5 (last epoch) | trivial all-positive F1 | F1 best-threshold (last, tuned on test) "
        f"| AUC (last) | F1@0.5 (best epoch) | ID-probe top-1 ({args.probe_checkpoint}) | chance | minutes per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lam in lambdas:
        g = rows[lam]
        lines.append(f"| {lam:g} | {mean_std(g['f1_05_last'])} | {mean_std(g['trivial'])} | "
                     f"{mean_std(g['f1_best_last'])} | {mean_std(g['auc_last'])} | {mean_std(g['f1_05_best'])} | "
                     f"{mean_std(g['probe'])} | {statistics.mean(g['chance']):.3f} | "
                     f"{statistics.mean(g['minutes']):.1f} |")
    if 0.0 in lambdas and len(lambdas) > 1:
        lines += ["", "Paired with λ = 0 (same fold and seed): change in the last epoch's F1@0.5 and AUC, and in "
                  "ID-probe accuracy; \"better\" counts the pairs where F1 rose / the probe fell.", "",
                  "| λ | ΔF1@0.5 | F1 better | ΔAUC | Δ ID-probe | probe lower |", "|---|---|---|---|---|---|"]
        for lam in lambdas:
            if lam == 0:
                continue
            pairs = [(paired[(f, s, lam)], paired[(f, s, 0.0)]) for f in folds for s in seeds]
            d_f1 = [a["f1"] - b["f1"] for a, b in pairs]
            d_auc = [a["auc"] - b["auc"] for a, b in pairs]
            d_pr = [a["probe"] - b["probe"] for a, b in pairs]
            lines.append(f"| {lam:g} | {mean_std(d_f1, '+')} | {sum(d > 0 for d in d_f1)}/{len(pairs)} | "
                         f"{mean_std(d_auc, '+')} | {mean_std(d_pr, '+')} | {sum(d < 0 for d in d_pr)}/{len(pairs)} |")
    lines += ["", "Per run (minutes: the training's and the probe's own, from their status.json):", "",
              *[f"- {x}" for x in log_lines]]
    if reused:
        lines += ["", f"Reused finished runs of this workdir (`--reuse`, same settings): {', '.join(reused)}; the "
                  "total time above counts only this call."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or HERE / "results" / f"quality_iat-{platform.machine()}-{os.cpu_count()}cpu.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and KEEP_FROM in (old := out.read_text()):
        text += "\n" + old[old.index(KEEP_FROM):]
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
