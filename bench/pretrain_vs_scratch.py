"""Does MAE pretraining help AU detection? The whole FMAE chain on synthetic data, against a random init.

    fmae synth (unlabelled faces: AffectNet-8 format + a BP4D copy; other seeds, so other people)
      -> fmae data lmdb -> fmae pretrain (vit_tiny, small decoder)
      -> fmae train bp4d --fold 1 --init pretrained.pth, and the same from a random init, λ = 0 and λ > 0
      -> fmae probe-id on every fine-tuned run (and on the pretrained encoder itself)

Everything runs through the real CLI. The labelled data is a separate synthetic BP4D copy (seed 0) whose
subjects appear in no pretraining image (a synthetic identity is drawn from the seed). Both arms use
exactly the same fine-tuning settings: by default those of bench/quality_iat.py, whose random-init
arm is the same experiment. Usage:

    python bench/pretrain_vs_scratch.py [--pretrain-epochs 10] [--epochs 8] [--lambdas 0,1] [--seeds 0,1]

Every value that differs from the paper's recipes is a command-line option here and is printed, with the
paper's value, in the results file. Prints one table and writes it to
bench/results/pretrain_vs_scratch-<machine>.md, and copies the last pretraining epoch's reconstructions to
bench/results/pretrain_vs_scratch-reconstructions.png; a hand-written section of the results file
starting at "## Reading" is kept when the benchmark is run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import ENV, fmae, fmt, fresh, mean_std, only_run  # noqa: E402

HERE = Path(__file__).resolve().parent
KEEP_FROM = "## Reading"  # the hand-written part of the results file, kept across runs

# The paper's values (fmae.recipes: MAE pretraining, BP4D "fmae" fine-tuning, the identity probe) that
# options here change.
PAPER_PRETRAIN = {"blr": 1.5e-4, "batch_size": 256, "epochs": 50, "warmup_epochs": 2, "decoder_depth": 8,
                  "decoder_dim": 512, "decoder_heads": 16}
PAPER_TRAIN = {"blr": 2e-4, "batch_size": 64, "epochs": 20, "warmup_epochs": 2, "layer_decay": 0.65,
               "weight_decay": 0.05, "drop_path": 0.1, "auto_augment": "rand-m9-mstd0.5-inc1",
               "random_erase_prob": 0.25, "crop_scale": 0.08}
PAPER_PROBE = {"blr": 2e-4, "epochs": 20, "frames_per_subject": 100, "train_frames_per_subject": 70}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def sets(values: dict[str, object]) -> list[str]:
    return [x for k, v in values.items() for x in ("--set", f"{k}={fmt(v)}")]


def changed(values: dict[str, object], paper: dict[str, object]) -> str:
    return "; ".join(f"{k} {fmt(v)} (paper {fmt(paper[k])})" for k, v in values.items() if v != paper[k]) or "nothing"


def synth(kind: str, out: Path, *opts: object) -> None:
    if not (out / "synth.json").exists():
        fmae("synth", kind, "--out", out, *opts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lambdas", default="0,1")
    p.add_argument("--seeds", default="0,1", help="fine-tuning and probe seeds (pretraining: one run, seed 0)")
    p.add_argument("--size", type=int, default=64, help="image side of every synthetic set (vit_tiny: 64)")
    g = p.add_argument_group("pretraining data (unlabelled: only the images are used)")
    g.add_argument("--pre-subjects", type=int, default=100, help="AffectNet-8-format identities (seed 1)")
    g.add_argument("--pre-frames", type=int, default=40, help="images per AffectNet-8 identity")
    g.add_argument("--pre-bp4d-frames", type=int, default=40,
                   help="frames per subject of an extra BP4D-format copy (41 subjects, seed 2; 0 = none)")
    g = p.add_argument_group("MAE pretraining (vit_tiny; the paper's recipe otherwise)")
    g.add_argument("--pretrain-epochs", type=int, default=10)
    g.add_argument("--pretrain-batch-size", type=int, default=64)
    g.add_argument("--pretrain-blr", type=float, default=3e-3)
    g.add_argument("--pretrain-warmup", type=int, default=1)
    g.add_argument("--decoder", default="2,128,4", help="decoder depth,dim,heads")
    g.add_argument("--pretrained", type=Path, default=None, help="skip pretraining: fine-tune from this checkpoint")
    g = p.add_argument_group("labelled data (fmae synth bp4d: 41 subjects, seed 0)")
    g.add_argument("--frames", type=int, default=40, help="frames per subject")
    g.add_argument("--identity-strength", type=float, default=0.75)
    g.add_argument("--nuisance", type=float, default=0.3)
    g = p.add_argument_group("fine-tuning, the same for both arms (defaults: bench/quality_iat.py's)")
    g.add_argument("--epochs", type=int, default=25)
    g.add_argument("--blr", type=float, default=5e-3)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--warmup", type=float, default=1)
    g.add_argument("--layer-decay", type=float, default=1.0)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--drop-path", type=float, default=0.0)
    g.add_argument("--auto-augment", default="", help='"" = no RandAugment (paper: rand-m9-mstd0.5-inc1)')
    g.add_argument("--random-erase-prob", type=float, default=0.0)
    g.add_argument("--crop-scale", type=float, default=1.0, help="RandomResizedCrop's smallest area share (paper 0.08)")
    g = p.add_argument_group("identity probe (frozen encoder, linear layer)")
    g.add_argument("--probe-epochs", type=int, default=10)
    g.add_argument("--probe-blr", type=float, default=5e-3)
    g.add_argument("--probe-frames", type=int, default=40,
                   help="frames per subject, split 70/30 (subjects with fewer use all theirs)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of each fmae process (OMP_NUM_THREADS); 1 keeps a 2-core machine from stalling")
    p.add_argument("--workdir", type=Path, default=HERE / ".pretrain_vs_scratch")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--png", type=Path, default=HERE / "results" / "pretrain_vs_scratch-reconstructions.png")
    args = p.parse_args()
    if args.threads > 0:
        ENV["OMP_NUM_THREADS"] = str(args.threads)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    dec_depth, dec_dim, dec_heads = (int(x) for x in args.decoder.split(","))
    work = args.workdir
    workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    start = time.perf_counter()
    minutes: dict[str, float] = {"data": 0.0, "pretrain": 0.0, "finetune": 0.0, "probe": 0.0}

    # --- data: unlabelled pretraining faces, and a separate labelled BP4D copy ----------------------
    tick = time.perf_counter()
    data = work / f"bp4d-f{args.frames}-s{args.size}-id{args.identity_strength:g}-n{args.nuisance:g}-seed0"
    synth("bp4d", data, "--frames", args.frames, "--size", args.size, "--seed", 0,
          "--identity-strength", args.identity_strength, "--nuisance", args.nuisance)
    sources = [work / f"pre-affectnet8-n{args.pre_subjects}-f{args.pre_frames}-s{args.size}-seed1"]
    synth("affectnet8", sources[0], "--subjects", args.pre_subjects, "--frames", args.pre_frames,
          "--size", args.size, "--seed", 1)
    if args.pre_bp4d_frames:
        sources.append(work / f"pre-bp4d-f{args.pre_bp4d_frames}-s{args.size}-seed2")
        synth("bp4d", sources[1], "--frames", args.pre_bp4d_frames, "--size", args.size, "--seed", 2)
    store = work / ("store-" + "+".join(s.name for s in sources))
    fmae("data", "lmdb", *sources, "--out", store)
    n_pre = sum(1 for s in sources for f in s.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    minutes["data"] = (time.perf_counter() - tick) / 60

    # --- MAE pretraining ------------------------------------------------------------------------
    pretrain = {"blr": args.pretrain_blr, "batch_size": args.pretrain_batch_size, "epochs": args.pretrain_epochs,
                "warmup_epochs": args.pretrain_warmup, "decoder_depth": dec_depth, "decoder_dim": dec_dim,
                "decoder_heads": dec_heads}
    losses: list[float] = []
    if args.pretrained is None:
        tick = time.perf_counter()
        runs = fresh(work / "runs" / "pretrain")
        fmae("pretrain", "--data", store, "--model", "vit_tiny", "--seed", 0, "--epochs", args.pretrain_epochs,
             "--batch-size", args.pretrain_batch_size, "--decoder-depth", dec_depth, "--decoder-dim", dec_dim,
             "--decoder-heads", dec_heads, *sets({"blr": args.pretrain_blr, "warmup_epochs": args.pretrain_warmup,
                                                   "num_workers": workers, "log_every": 1000}),
             "--runs-dir", runs, "--quiet")
        pre_run = only_run(runs)
        pretrained = pre_run / "checkpoints" / "pretrained.pth"
        records = [json.loads(x) for x in (pre_run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        losses = [r["loss"] for r in records if r["split"] == "train_epoch"]
        pngs = sorted((pre_run / "predictions").glob("reconstructions-e*.png"))
        args.png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pngs[-1], args.png)
        minutes["pretrain"] = (time.perf_counter() - tick) / 60
        print(f"pretrained {args.pretrain_epochs} epochs on {n_pre} images in {minutes['pretrain']:.1f} min: "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
    else:
        pretrained = args.pretrained.resolve()

    common = ["--root", data, "--labels", data / "labels.jsonl", "--quiet"]
    per_subject = args.probe_frames
    probe = {"blr": args.probe_blr, "epochs": args.probe_epochs, "frames_per_subject": per_subject,
             "train_frames_per_subject": int(round(per_subject * 0.7))}
    probe_args = ["--epochs", args.probe_epochs, *sets({k: v for k, v in probe.items() if k != "epochs"}),
                  *sets({"num_workers": workers, "log_every": 1000}), *common]

    # The pretrained encoder before any fine-tuning: how much identity its features carry.
    tick = time.perf_counter()
    probes = fresh(work / "probes" / "mae-encoder")
    fmae("probe-id", pretrained, "--model", "vit_tiny", "--dataset", "bp4d", "--seed", 0, "--runs-dir", probes,
         *probe_args)
    mae_probe = json.loads((only_run(probes) / "summary.json").read_text())["best"]
    minutes["probe"] += (time.perf_counter() - tick) / 60
    print(f"MAE encoder, not fine-tuned: ID probe {mae_probe['accuracy']:.3f} (chance {mae_probe['chance']:.3f})",
          flush=True)

    # --- fine-tuning: MAE init vs random init, λ = 0 and λ > 0 ----------------------------------
    train = {"blr": args.blr, "batch_size": args.batch_size, "epochs": args.epochs, "warmup_epochs": args.warmup,
             "layer_decay": args.layer_decay, "weight_decay": args.weight_decay, "drop_path": args.drop_path,
             "auto_augment": args.auto_augment, "random_erase_prob": args.random_erase_prob,
             "crop_scale": args.crop_scale}
    train_args = ["--epochs", args.epochs, "--batch-size", args.batch_size,
                  *sets({k: v for k, v in train.items() if k not in ("batch_size", "epochs")}),
                  *sets({"num_workers": workers, "log_every": 1000}), *common]
    inits = {"MAE": pretrained, "scratch": None}
    keys = ("f1_05_last", "f1_best_last", "auc_last", "f1_05_best", "trivial", "probe", "chance")
    rows = {(init, lam): {k: [] for k in keys} for init in inits for lam in lambdas}
    log_lines: list[str] = []
    for seed in seeds:
        for lam in lambdas:
            for init, ckpt in inits.items():
                tag = f"{init}-l{lam:g}-s{seed}"
                tick = time.perf_counter()
                runs = fresh(work / "runs" / tag)
                fmae("train", "bp4d", "--fold", 1, "--seed", seed, "--lambda-id", lam, "--model", "vit_tiny",
                     *(["--init", ckpt] if ckpt else []), *train_args, "--runs-dir", runs)
                run = only_run(runs)
                minutes["finetune"] += (time.perf_counter() - tick) / 60
                summary = json.loads((run / "summary.json").read_text())
                best, last = summary["best"], summary["last"]
                labels = np.load(run / "predictions" / "best.npz")["labels"].astype(float)
                rate = labels.mean(0)
                trivial = float(np.mean(2 * rate / (1 + rate)))  # F1 of predicting every AU present
                tick = time.perf_counter()
                probes = fresh(work / "probes" / tag)
                fmae("probe-id", run, "--dataset", "bp4d", "--seed", seed, "--runs-dir", probes, *probe_args)
                pr = json.loads((only_run(probes) / "summary.json").read_text())["best"]
                minutes["probe"] += (time.perf_counter() - tick) / 60
                for key, value in (("f1_05_last", last["f1_05_mean"]), ("f1_best_last", last["f1_best_mean"]),
                                   ("auc_last", last["auc_mean"]), ("f1_05_best", best["f1_05_mean"]),
                                   ("trivial", trivial), ("probe", pr["accuracy"]), ("chance", pr["chance"])):
                    rows[(init, lam)][key].append(value)
                line = (f"seed {seed} λ={lam:g} {init}: F1@0.5 last {last['f1_05_mean']:.3f} (trivial {trivial:.3f}), "
                        f"F1 best-threshold {last['f1_best_mean']:.3f} (tuned on test), AUC {last['auc_mean']:.3f}, "
                        f"F1@0.5 at the best epoch ({summary['best_epoch']}, picked on test) "
                        f"{best['f1_05_mean']:.3f}, ID probe {pr['accuracy']:.3f}")
                log_lines.append(line)
                print(line, flush=True)
    total = (time.perf_counter() - start) / 60
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime + usage.ru_stime) / 60  # all fmae processes (and their workers)

    # --- report ---------------------------------------------------------------------------------
    n = len(seeds)
    runs_n = len(seeds) * len(lambdas) * len(inits)
    chance = statistics.mean(rows[("scratch", lambdas[0])]["chance"])
    lines = [
        "# Does MAE pretraining help AU detection? vit_tiny on synthetic faces, MAE init vs random init (CPU)",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU, Python {platform.python_version()}; "
        f"{total:.1f} minutes in all (data {minutes['data']:.1f}, pretraining {minutes['pretrain']:.1f}, "
        f"{runs_n} fine-tunings {minutes['finetune']:.1f}, {runs_n + 1} identity probes {minutes['probe']:.1f}); "
        f"{cpu:.1f} CPU-minutes (user + system) in the fmae processes",
        "",
        f"command: `{shlex.join(['python', 'bench/pretrain_vs_scratch.py', *sys.argv[1:]])}`",
        "",
        f"- pretraining data: {n_pre} unlabelled synthetic faces, {args.size} px: `fmae synth affectnet8`, "
        f"{args.pre_subjects} identities × {args.pre_frames} images, seed 1"
        + (f"; `fmae synth bp4d`, 41 subjects × {args.pre_bp4d_frames} frames, seed 2" if args.pre_bp4d_frames
           else "")
        + "; packed with `fmae data lmdb`. No pretraining image shows a person of the labelled set.",
        (f"- pretraining: `fmae pretrain --model vit_tiny` (one run, seed 0), input {args.size} px; the paper's "
         f"recipe (mask 0.75, norm-pix loss, AdamW betas 0.9/0.95, wd 0.05) except: "
         f"{changed(pretrain, PAPER_PRETRAIN)}. Masked-patch loss {losses[0]:.4f} at epoch 1 -> {losses[-1]:.4f} at "
         f"epoch {len(losses)} (predicting every patch's mean, i.e. 0 after norm-pix, scores just under 1.0)"
         if losses else f"- pretraining: skipped, fine-tuned from `{pretrained}`"),
        f"- labelled data: `fmae synth bp4d`, 41 subjects × {args.frames} frames, {args.size} px, identity strength "
        f"{args.identity_strength:g}, nuisance {args.nuisance:g}, seed 0; fold 1: train on 27 subjects, test on "
        f"the 14 unseen ones; seeds {seeds} (n = {n} per row, mean ± std)",
        f"- fine-tuning, identical for both arms: `fmae train bp4d --fold 1 --model vit_tiny` with `--init "
        f"pretrained.pth` (MAE) or without (scratch); the paper's BP4D recipe except: {changed(train, PAPER_TRAIN)}",
        f"- identity probe: `fmae probe-id` on each run's best checkpoint (frozen encoder, linear layer over all 41 "
        f"subjects, frames split 70/30 per subject); the paper's protocol except: {changed(probe, PAPER_PROBE)}",
        "- trivial = F1 of predicting every AU present on the test split (mean over AUs of 2p/(1+p))",
        "",
        "| init | λ | F1@0.5 (last epoch) | F1 best-threshold (last, tuned on test) | AUC (last) "
        "| trivial all-positive F1 | ID-probe top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for lam in lambdas:
        for init in inits:
            r = rows[(init, lam)]
            lines.append(f"| {init} | {lam:g} | {mean_std(r['f1_05_last'])} | {mean_std(r['f1_best_last'])} | "
                         f"{mean_std(r['auc_last'])} | {mean_std(r['trivial'])} | {mean_std(r['probe'])} |")
    lines += [
        "",
        f"ID-probe chance: {chance:.3f}. The pretrained MAE encoder itself, before fine-tuning: "
        f"{mae_probe['accuracy']:.3f}.",
        "",
        "MAE − scratch, paired by λ and seed; \"MAE better\" counts the pairs where MAE's F1@0.5 (last) is higher:",
        "",
        "| λ | ΔF1@0.5 (last) | MAE better | ΔF1 best-threshold (last, tuned on test) | ΔAUC (last) | Δ ID-probe |",
        "|---|---|---|---|---|---|",
    ]
    for lam in lambdas:
        m, s = rows[("MAE", lam)], rows[("scratch", lam)]
        d = {k: [a - b for a, b in zip(m[k], s[k])] for k in ("f1_05_last", "f1_best_last", "auc_last", "probe")}
        lines.append(f"| {lam:g} | {mean_std(d['f1_05_last'], '+')} | {sum(x > 0 for x in d['f1_05_last'])}/{n} | "
                     f"{mean_std(d['f1_best_last'], '+')} | {mean_std(d['auc_last'], '+')} | "
                     f"{mean_std(d['probe'], '+')} |")
    lines += ["", "Per run:", "", *[f"- {x}" for x in log_lines]]
    out = args.out or HERE / "results" / f"pretrain_vs_scratch-{platform.machine()}-{os.cpu_count()}cpu.md"
    if losses:
        png = os.path.relpath(args.png.resolve(), out.resolve().parent)
        lines += ["", f"Reconstructions after the last pretraining epoch: [{png}]({png}) (rows: original, masked, "
                      "reconstruction, reconstruction with the visible patches pasted back)."]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and KEEP_FROM in (old := out.read_text()):
        text += "\n" + old[old.index(KEEP_FROM):]
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
