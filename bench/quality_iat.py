"""Quality on synthetic data we control: does fmae learn AUs of unseen subjects, and does
identity-adversarial training (λ > 0) do what the paper claims — less identity in the features
(identity-probe accuracy down) with AU F1 on unseen subjects up or at least holding?

Everything runs through the real CLI (`fmae synth`, `fmae train`, `fmae probe-id`) on synthetic
BP4D-format data with per-subject AU tendencies (`--identity-strength`: how far each subject's AU rates
stray from the dataset's, so identity predicts the labels of the training subjects and nothing about
the unseen test subjects — the shortcut IAT exists to remove). Usage:

    python bench/quality_iat.py [--epochs 8] [--lambdas 0,2] [--seeds 0,1,2] [--folds 1,2,3]

By default the whole protocol: 3 folds × 3 seeds, λ 0 and 2. The table is reported through `fmae compare`
(each λ > 0 against λ = 0 over the (fold, seed) cells: Δ F1@0.5, F1 best-threshold (tuned on test) and AUC
with 95 % intervals from a bootstrap over the test subjects, a sign-flip test over the cells, a verdict),
the identity probe's Δ accuracy with the same kind of interval (subjects resampled, paired by cell), and
the t-SNE silhouette by subject of each run's test features (`fmae features`; IAT should lower it).

`--quick` is the documented small scale (12 frames a subject at 32 px, 2 epochs, 2 probe epochs, 150
frames a picture): every step of the full protocol in minutes on an idle 2-core CPU; its numbers say the
pipeline works, not whether IAT helps.

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
QUICK = {"frames": 12, "size": 32, "epochs": 2, "probe_epochs": 2, "probe_frames": 10, "features_frames": 150}


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


def probe_counts(probe_run: Path) -> dict[str, tuple[int, int]]:
    """Per subject: (test frames the probe named right, test frames) from its best epoch's predictions."""
    d = np.load(probe_run / "predictions" / "best.npz")
    names, targets = [str(x) for x in d["subjects"]], d["targets"]
    right = d["scores"].argmax(1) == targets
    return {names[s]: (int(right[targets == s].sum()), int((targets == s).sum())) for s in np.unique(targets)}


def probe_delta(pairs: list[tuple[Path, Path]], draws: int) -> dict[str, float]:
    """Δ identity-probe top-1 (A − B, points) over paired cells, with a 95 % interval from resampling the
    subjects (one draw for every cell: the probe tests the same people) and the sign-flip p over cells."""
    from fmae.report.paired_stats import draws_of, sign_flip_p

    counts = [(probe_counts(a), probe_counts(b)) for a, b in pairs]
    people = sorted(set.intersection(*[set(a) & set(b) for a, b in counts]))
    rng = np.random.default_rng(0)
    w = np.vstack([np.ones((1, len(people))), draws_of(len(people), draws, rng)])  # row 0: as observed
    deltas = []
    for a, b in counts:
        acc = [(w @ np.array([c[p][0] for p in people])) / (w @ np.array([c[p][1] for p in people])) for c in (a, b)]
        deltas.append((acc[0] - acc[1]) * 100)  # [1 + D]
    deltas = np.array(deltas)  # [cells, 1 + D]
    boot = deltas[:, 1:].mean(axis=0)
    p, _, _ = sign_flip_p(deltas[:, :1], rng)
    return {"delta": float(deltas[:, 0].mean()), "low": float(np.percentile(boot, 2.5)),
            "high": float(np.percentile(boot, 97.5)), "p": float(p[0]), "subjects": len(people)}


def protocol_report(work: Path, cells: dict, folds: list[int], seeds: list[int], lambdas: list[float],
                    features_frames: int, draws: int) -> list[str]:
    """Each λ > 0 against λ = 0 through `fmae compare` (one runs folder linking every run), the probe's
    Δ with its interval, and each run's t-SNE silhouette by subject (`fmae features`)."""
    import shutil as _shutil

    linked = work / "compare_runs"
    _shutil.rmtree(linked, ignore_errors=True)
    linked.mkdir(parents=True)
    for run, _ in cells.values():
        (linked / run.name).symlink_to(run.resolve(), target_is_directory=True)
    out = ["", f"## Through `fmae compare` ({len(folds)} fold(s) × {len(seeds)} seed(s); Δ = λ − (λ = 0), points; "
           "each run's best epoch, from its saved predictions)", ""]
    silhouettes: dict[float, list[float]] = {lam: [] for lam in lambdas}
    if features_frames:
        for (fold, seed, lam), (run, _) in sorted(cells.items()):
            pic = work / "features" / f"f{fold}-s{seed}-l{lam:g}.png"
            said = fmae("features", run, "--by", "subject", "--out", pic, "--max-frames", features_frames).stdout
            score = next(x for x in said.splitlines() if x.strip().startswith("subject")).split()[1]
            if score != "–":  # undefined (one subject in the picture)
                silhouettes[lam].append(float(score))
    for lam in lambdas:
        if lam == 0:
            continue
        a = f"bp4d vit_tiny fmae λ={lam:g}"
        said = fmae("compare", a, "bp4d vit_tiny fmae λ=0", "--runs-dir", linked, "--draws", draws, "-f", "json")
        result = json.loads(said.stdout)
        out += [f"λ = {lam:g} vs λ = 0: {len(result['cells'])} cells, {result['subjects']} test subjects resampled, "
                f"{result['permutations']} sign patterns", "",
                "| metric (mean over AUs) | λ = 0 | λ = " + f"{lam:g}" + " | Δ | 95% interval | p | verdict |",
                "|---|---|---|---|---|---|---|"]
        for m in result["metrics"]:
            out.append(f"| {m['label']} | {m['b']['avg']:.2f} | {m['a']['avg']:.2f} | {m['delta']['avg']:+.2f} | "
                       f"[{m['low']['avg']:+.2f}, {m['high']['avg']:+.2f}] | {m['p']['avg']:.3f} | "
                       f"{m['verdict']['avg']} |")
        verdicts = {m["label"]: sum(v != "within noise" for v in m["verdict"].values()) for m in result["metrics"]}
        pr = probe_delta([(cells[(f, s, lam)][1], cells[(f, s, 0.0)][1]) for f in folds for s in seeds], draws)
        out += ["", f"- AUs (and avg) with a verdict other than 'within noise': "
                + ", ".join(f"{k} {v}" for k, v in verdicts.items()),
                f"- identity probe top-1: Δ {pr['delta']:+.2f} points, 95% interval [{pr['low']:+.2f}, "
                f"{pr['high']:+.2f}] (bootstrap over its {pr['subjects']} subjects), sign-flip p {pr['p']:.3f} "
                "(lower = less identity in the features, the paper's claim)"]
        for note in result["notes"]:
            out.append(f"- note: {note}")
        if features_frames:
            d = [x - y for x, y in zip(silhouettes[lam], silhouettes[0.0])]
            out.append(f"- t-SNE silhouette by subject (PCA-50 features, {features_frames} test frames a run): λ = 0 "
                       f"{mean_std(silhouettes[0.0])}, λ = {lam:g} {mean_std(silhouettes[lam])}, paired Δ "
                       f"{mean_std(d, '+')} (lower = subjects less separable)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lambdas", default="0,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--folds", default="1,2,3")
    p.add_argument("--quick", action="store_true",
                   help="the small scale: --frames 12 --size 32 --epochs 2 --probe-epochs 2 --probe-frames 10 "
                   "--features-frames 150 (options given as well win)")
    p.add_argument("--features-frames", type=int, default=1000,
                   help="test frames per t-SNE picture (fmae features --max-frames); 0 = no pictures")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws of fmae compare and the probe's interval")
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
    if args.quick:
        given = set(sys.argv[1:])
        for flag, value in QUICK.items():
            if f"--{flag.replace('_', '-')}" not in given:
                setattr(args, flag, value)
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
    cells: dict[tuple[int, int, float], tuple[Path, Path]] = {}  # (fold, seed, λ) -> (run, its probe)
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
                cells[(fold, seed, lam)] = (run, probe_run)
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
    if 0.0 in lambdas and len(lambdas) > 1:
        lines += protocol_report(work, cells, folds, seeds, lambdas, args.features_frames, args.draws)
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
