"""The tasks the one Trainer runs: each supplies its data, model, loss and test metrics.

AU detection (with identity-adversarial training when λ > 0), FER classification, and the identity
linear probe. The loop, schedule, precision, checkpoints and the run folder live in `trainer.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmae.config import DatasetLocation
from fmae.data.au_labels import AULabels, load_au_fold, read_au_jsonl
from fmae.data.torch.cached import choose_cache, image_set
from fmae.data.torch.datasets import ImageSet, Splits
from fmae.data.fer_folders import read_fer_split
from fmae.data.image_check import check_image_files
from fmae.data.problems import Problems
from fmae.errors import FmaeError
from fmae.run_spec import RunSpec
from fmae.metrics import all_positive_f1, au_scores, fer_scores
from fmae.summary import degenerate_scores
from fmae.models.checkpoint import load_pretrained
from fmae.models.encoders import create_encoder, encoder_spec
from fmae.models.heads import ID_HEAD_DEPTHS, FineTuneModel, IdentityProbe
from fmae.registry import DatasetSpec, get_dataset

log = logging.getLogger("fmae.train")


@dataclass
class Batch:
    x: torch.Tensor  # [B, 3, H, W] images (or [B, D] features for the probe)
    y: torch.Tensor  # [B, K] float multi-hot (AU) or [B] int64 class (FER, probe)
    subject: torch.Tensor  # [B] int64 identity index, -1 where unknown


class Task:
    """What differs between AU, FER and probing. Subclasses set `metric` (the test-record key that
    picks the best epoch) and its human label."""

    metric: str = ""
    metric_label: str = ""
    has_test = True  # evaluated on a test split every epoch

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.run_spec = RunSpec.from_flat(cfg)  # the typed sections (defaults in fmae/run_spec.py)
        self.spec: DatasetSpec = get_dataset(self.run_spec.identity.dataset)

    def location(self) -> DatasetLocation:
        d = self.run_spec.data
        root = Path(d.data_root) if d.data_root else None
        if root is None or not root.is_dir():
            raise FmaeError(f"run.toml: data_root {root} is not a folder — the dataset moved; fix data_root "
                            "in this run's run.toml or queue a new run")
        return DatasetLocation(name=self.spec.name, root=root, labels=Path(d.labels) if d.labels else None,
                               train_labels=d.train_labels or None, test_labels=d.test_labels or None,
                               origin="run.toml")

    def build_data(self) -> Splits:
        raise NotImplementedError

    def build_model(self) -> tuple[nn.Module, int]:
        """The model and its number of transformer blocks (for layer-wise lr decay)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def scores(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Test-time outputs kept for scoring: probabilities [B, K]."""
        raise NotImplementedError

    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def predictions(self, outputs: np.ndarray, targets: np.ndarray, data: ImageSet) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # shared -------------------------------------------------------------------------------------
    def _encoder(self):
        m = self.run_spec.model
        return create_encoder(m.model, img_size=self.run_spec.augment.input_size, drop_path=float(m.drop_path))

    def _load_init(self, model: nn.Module) -> None:
        m = self.run_spec.model
        if m.init:
            report = load_pretrained(model, Path(m.init))
            # head_init's default, "keep", is what run.toml files written before the key did
            if isinstance(model, FineTuneModel) and m.head_init == "redraw":
                report.notes.append(model.redraw_head())
            log.info("loaded %s: %s", m.init, report)


class AUTask(Task):
    metric = "f1_best_mean"
    metric_label = "mean F1 at the best threshold (tuned on the test fold, as the paper)"
    # cross-dataset evaluation: the model's output columns scored, and their AU codes (else all of them)
    columns: list[int] | None = None
    codes: tuple[int, ...] = ()

    def build_data(self) -> Splits:
        if self.run_spec.identity.eval_dataset:
            from fmae.train.cross_dataset import cross_dataset_data

            splits, self.test_labels, self.columns, self.codes = cross_dataset_data(self.cfg, self.spec, self.location())
            return splits
        problems = Problems()
        loc = self.location()
        fold = load_au_fold(self.spec, loc, int(self.run_spec.identity.fold), problems)
        problems.raise_first()
        parts = {"train": fold.train, "test": fold.test}
        paths = {split: [loc.root / p for p in labels.paths] for split, labels in parts.items()}
        check_image_files({f"fold {fold.fold} {split} split": files for split, files in paths.items()})
        cache, keys = choose_cache(self.cfg, loc.root, paths)
        sets = [image_set(self.cfg, paths[split], labels.labels.astype(np.float32), train=split == "train",
                          subjects=labels.subject_index(), cache=cache, keys=keys.get(split))
                for split, labels in parts.items()]
        describe = (f"{self.spec.title} fold {fold.fold}: train {len(fold.train)} frames of "
                    f"{len(set(fold.train.subjects))} subjects, test {len(fold.test)} frames of "
                    f"{len(set(fold.test.subjects))} subjects")
        self.test_labels = fold.test
        return Splits(sets[0], sets[1], describe)

    def build_model(self) -> tuple[nn.Module, int]:
        lam = float(self.run_spec.identity.lambda_id)
        depth = int(self.run_spec.model.id_head_depth)  # its default, 1 (the paper's linear head), for older run.toml files
        if depth not in ID_HEAD_DEPTHS:
            raise FmaeError(f"id_head_depth = {depth}: choose 1 (linear, the paper's), 2 or 3 (an MLP of that many "
                            "layers, the paper's ablation)")
        model = FineTuneModel(self._encoder(), self.spec.num_outputs,
                              num_subjects=len(self.spec.subjects) if lam > 0 else 0, lambda_id=lam, id_head_depth=depth)
        self._load_init(model)
        return model, encoder_spec(self.run_spec.model.model).depth

    def loss(self, model, batch):
        logits, id_logits = model(batch.x)
        loss_au = F.binary_cross_entropy_with_logits(logits.float(), batch.y)
        if id_logits is None:
            return loss_au, {"loss_au": loss_au}
        # The original scored identity with BCE over a one-hot vector (not cross-entropy); kept so
        # that λ means what it meant in the paper. The reversal layer scales its gradient by −λ.
        onehot = F.one_hot(batch.subject, id_logits.shape[1]).float()
        loss_id = F.binary_cross_entropy_with_logits(id_logits.float(), onehot)
        id_acc = (id_logits.argmax(1) == batch.subject).float().mean()
        return loss_au + loss_id, {"loss_au": loss_au, "loss_id": loss_id, "id_acc": id_acc}

    def scores(self, model, x):
        logits, _ = model(x)
        probs = torch.sigmoid(logits.float())
        return probs if self.columns is None else probs[:, self.columns]

    def evaluate(self, outputs, targets):
        record = au_scores(outputs, targets.astype(np.uint8)).to_dict(self.codes or self.spec.au_codes)
        # What a reader needs beside the numbers: the floor F1@0.5 must clear, and whether the tuned
        # threshold only found "every AU present" (or none).
        record["f1_all_positive_mean"] = all_positive_f1(targets)
        record["degenerate"] = degenerate_scores(record["best_threshold"], record["f1_best_mean"],
                                                 record["f1_all_positive_mean"])
        return record

    def predictions(self, outputs, targets, data):
        return {"probs": outputs.astype(np.float32), "labels": targets.astype(np.uint8),
                "paths": np.array([str(p) for p in data.paths]),
                "subjects": np.array(self.test_labels.subjects), "au_codes": np.array(self.codes or self.spec.au_codes)}


class FERTask(Task):
    metric = "accuracy"
    metric_label = "top-1 accuracy"

    def build_data(self) -> Splits:
        problems = Problems()
        loc = self.location()
        train = read_fer_split(self.spec, loc.root, "train", problems)
        test = read_fer_split(self.spec, loc.root, "test", problems)
        problems.raise_first()
        parts = {"train": train, "test": test}
        check_image_files({f"{split} split": part.paths for split, part in parts.items()})
        cache, keys = choose_cache(self.cfg, loc.root, {split: part.paths for split, part in parts.items()})
        sets = [image_set(self.cfg, part.paths, part.targets, train=split == "train", cache=cache, keys=keys.get(split))
                for split, part in parts.items()]
        describe = f"{self.spec.title}: train {len(train)} images, test {len(test)} images, {len(self.spec.classes)} classes"
        return Splits(sets[0], sets[1], describe)

    def build_model(self):
        model = FineTuneModel(self._encoder(), self.spec.num_outputs)
        self._load_init(model)
        return model, encoder_spec(self.run_spec.model.model).depth

    def loss(self, model, batch):
        logits, _ = model(batch.x)
        loss = F.cross_entropy(logits.float(), batch.y)
        return loss, {"acc": (logits.argmax(1) == batch.y).float().mean()}

    def scores(self, model, x):
        logits, _ = model(x)
        return torch.softmax(logits.float(), dim=1)

    def evaluate(self, outputs, targets):
        return fer_scores(outputs, targets.astype(np.int64), len(self.spec.classes)).to_dict(list(self.spec.classes))

    def predictions(self, outputs, targets, data):
        return {"scores": outputs.astype(np.float32), "targets": targets.astype(np.int64),
                "paths": np.array([str(p) for p in data.paths]), "classes": np.array(self.spec.classes)}


class IdProbeTask(Task):
    """The paper's identity linear probe: a frozen encoder, a bias-free linear layer over the
    dataset's subjects, 100 frames per subject split 70/30. Lower accuracy after IAT = less identity
    in the features. Frames are not augmented: the probe reads what the encoder keeps of identity."""

    metric = "accuracy"
    metric_label = "identity top-1 accuracy (linear probe)"

    def build_data(self) -> Splits:
        problems = Problems()
        loc = self.location()
        frames = self._all_frames(loc, problems)
        problems.raise_first()
        d = self.run_spec.data
        per, n_train = int(d.frames_per_subject), int(d.train_frames_per_subject)
        rng = np.random.default_rng(int(self.run_spec.identity.seed))
        train_idx, test_idx = [], []
        by_subject: dict[str, list[int]] = {}
        for i, s in enumerate(frames.subjects):
            by_subject.setdefault(s, []).append(i)
        short = []
        for s in sorted(by_subject):
            idx = np.array(by_subject[s])
            pick = rng.choice(idx, size=min(per, len(idx)), replace=False)
            k = int(round(len(pick) * n_train / per))
            if len(pick) < per:
                short.append(s)
            if k < 1 or k >= len(pick):
                raise FmaeError(f"{frames.source}: subject {s} has {len(idx)} frames — the identity probe needs at "
                                "least 2 per subject (one train, one test)")
            train_idx += pick[:k].tolist()
            test_idx += pick[k:].tolist()
        if short:
            log.warning("%d subjects have fewer than %d frames (e.g. %s); they use all they have, split %d:%d",
                        len(short), per, short[0], n_train, per - n_train)
        sub = frames.subject_index()
        chosen = {"train": np.array(sorted(train_idx)), "test": np.array(sorted(test_idx))}
        paths = {split: [loc.root / frames.paths[i] for i in idx] for split, idx in chosen.items()}
        check_image_files({f"identity-probe {split} frames": files for split, files in paths.items()})
        cache, keys = choose_cache(self.cfg, loc.root, paths)
        # Probe frames are not augmented: both splits take the evaluation transform.
        sets = [image_set(self.cfg, paths[split], sub[idx], train=False, subjects=sub[idx], cache=cache,
                          keys=keys.get(split)) for split, idx in chosen.items()]
        describe = (f"{self.spec.title} identity probe: {len(by_subject)} subjects, {len(train_idx)} train / "
                    f"{len(test_idx)} test frames")
        return Splits(sets[0], sets[1], describe)

    def _all_frames(self, loc: DatasetLocation, problems: Problems) -> AULabels:
        if loc.labels:
            return read_au_jsonl(loc.labels, self.spec, problems)
        fold = load_au_fold(self.spec, loc, 1, problems)  # per-fold files: fold 1's train ∪ test = everyone
        both = fold.train
        return AULabels(self.spec, both.source, both.paths + fold.test.paths,
                        np.concatenate([both.labels, fold.test.labels]), both.subjects + fold.test.subjects,
                        both.lines + fold.test.lines)

    def build_model(self):
        if not self.run_spec.model.init:
            raise FmaeError("identity probing needs an encoder to probe: pass a run folder or a checkpoint")
        model = IdentityProbe(self._encoder(), len(self.spec.subjects))
        self._load_init(model)
        return model, encoder_spec(self.run_spec.model.model).depth

    def loss(self, model, batch):
        logits = model(batch.x)
        return F.cross_entropy(logits.float(), batch.y), {"acc": (logits.argmax(1) == batch.y).float().mean()}

    def scores(self, model, x):
        return torch.softmax(model(x).float(), dim=1)

    def evaluate(self, outputs, targets):
        acc = float((outputs.argmax(1) == targets).mean())
        return {"accuracy": acc, "chance": 1.0 / max(1, len(np.unique(targets)))}

    def predictions(self, outputs, targets, data):
        return {"scores": outputs.astype(np.float32), "targets": targets.astype(np.int64),
                "paths": np.array([str(p) for p in data.paths]), "subjects": np.array(self.spec.subjects)}


class PretrainTask(Task):
    """MAE pretraining on unlabelled faces from LMDB stores and/or image folders. No test split: each
    epoch ends with a grid of reconstructions of fixed images (predictions/), the loss is the curve."""

    metric = "loss"
    metric_label = "masked-patch reconstruction loss (train, epoch mean; lower is better)"
    has_test = False

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.run_spec = RunSpec.from_flat(cfg)
        self.spec = None  # no benchmark: the images come from run_spec.data.data

    def build_data(self) -> Splits:
        from torchvision import transforms as T
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        from fmae.data.torch.datasets import SourceImageSet
        from fmae.data.image_store import open_image_source

        stores = self.run_spec.data.data
        sources = [open_image_source(Path(p)) for p in stores]
        size = int(self.run_spec.augment.input_size)
        # The original's pretraining augmentation: resize, flip, normalise (faces are already crops).
        tf = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                        T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
        train = SourceImageSet(sources, tf, seed=int(self.run_spec.identity.seed))
        if len(train) == 0:
            raise FmaeError(f"--data {', '.join(stores)}: no images")
        plain = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
        self.preview = SourceImageSet(sources, plain)
        parts = ", ".join(f"{Path(p).name} ({len(s)})" for p, s in zip(stores, sources))
        return Splits(train, None, f"MAE pretraining on {len(train)} images: {parts}")

    def build_model(self):
        from fmae.models.mae import MaskedAutoencoder

        m = self.run_spec.model
        model = MaskedAutoencoder(m.model, img_size=int(self.run_spec.augment.input_size), decoder_dim=int(m.decoder_dim),
                                  decoder_depth=int(m.decoder_depth), decoder_heads=int(m.decoder_heads),
                                  norm_pix_loss=bool(m.norm_pix_loss))
        return model, model.depth

    def loss(self, model, batch):
        loss, _, mask = model(batch.x, mask_ratio=float(self.run_spec.model.mask_ratio))
        return loss, {}

    def preview_images(self, count: int = 8) -> torch.Tensor:
        n = len(self.preview)
        picks = np.linspace(0, n - 1, num=min(count, n)).round().astype(int)
        return torch.stack([self.preview[int(i)][0] for i in picks])


TASKS: dict[str, type[Task]] = {"au": AUTask, "fer": FERTask, "id_probe": IdProbeTask, "pretrain": PretrainTask}


def make_task(cfg: Mapping[str, Any]) -> Task:
    return TASKS[cfg["task"]](cfg)
