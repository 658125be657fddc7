"""`fastervar evaluate`: sample N images per class and score them against the real test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FastervarError
from ..models.protocol import FamilyModel
from ..models.sampling import SamplingSettings
from ..models.var.family import VARModel, to_uint8
from ..profile import Profile
from ..timing import TorchRunner, batches, first_pass, interleaved, speedup, summarize
from .clip_metrics import paired_clip_figures
from .features import ClassifierFeatures, FeatureExtractor
from .judge import JudgeFiles, check_domain, load_npz
from .metrics import frechet_distance, gaussian_stats, kid, mean_psnr, ssim


@dataclass
class Reference:
    """Real-data statistics in the extractor's feature space."""

    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray
    test_accuracy: float | None

    @classmethod
    def load(cls, judge: JudgeFiles) -> Reference:
        if not judge.stats.exists():
            raise FastervarError(f"the {judge.name} has no reference statistics: {judge.stats} is missing")
        z = load_npz(judge.stats, ("mu", "sigma", "kid_features", "test_accuracy"))
        return cls(z["mu"], z["sigma"], z["kid_features"], float(z["test_accuracy"]))

    @classmethod
    def from_images(cls, ext: FeatureExtractor, images: np.ndarray) -> Reference:
        feats = ext.features(images)
        mu, sigma = gaussian_stats(feats)
        return cls(mu, sigma, feats, None)


def real_test_images(judge: JudgeFiles) -> tuple[np.ndarray, np.ndarray]:
    """The judge's real test images (1000 Fashion-MNIST ones for the shipped judge) as
    (N, 32, 32, 3) uint8, with labels."""
    from ..utils.images import grey_to_rgb
    z = load_npz(judge.real_images, ("images", "labels"))
    return grey_to_rgb(z["images"]), z["labels"]


@torch.no_grad()
def reconstructions(model: VARModel, images: np.ndarray, chunk: int = 250) -> np.ndarray:
    """VQVAE round trip of real images: what a perfect token predictor could at best produce."""
    out = []
    for lo in range(0, len(images), chunk):
        x = torch.from_numpy(images[lo:lo + chunk]).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(to_uint8(model.vae.reconstruct(x.to(model.var.head.weight.device)).add(1).mul(0.5)).cpu().numpy())
    return np.concatenate(out)


def distribution_scores(ext: FeatureExtractor, ref: Reference, images: np.ndarray) -> dict[str, float]:
    feats = ext.features(images)
    mu, sigma = gaussian_stats(feats)
    return {"frechet_distance": frechet_distance(mu, sigma, ref.mu, ref.sigma),
            "kid": kid(ref.kid_features, feats)}


def class_accuracy(ext: FeatureExtractor, images: np.ndarray, classes: list[int]) -> float | None:
    if not isinstance(ext, ClassifierFeatures):
        return None
    return float((ext.predict(images) == np.asarray(classes)).mean())


def _times(passes: list) -> dict:
    t = summarize(passes)
    return {"seconds_transformer": t.seconds_steps, "seconds_total": t.seconds, "step_seconds": t.step_seconds,
            "decode_seconds": t.decode_seconds}


def _side(ext: FeatureExtractor, ref: Reference, passes: list, classes: list[int]) -> tuple[dict, np.ndarray]:
    images = first_pass(passes).images
    out = {"class_accuracy": class_accuracy(ext, images, classes)}
    out.update(distribution_scores(ext, ref, images))
    out.update(_times(passes))
    return out, images


def evaluate(model: VARModel, ext: FeatureExtractor, judge: JudgeFiles, settings: SamplingSettings,
             samples_per_class: int, seed: int, batch_size: int, profile: Profile | None = None,
             progress: bool = True, clip=None) -> dict:
    """Generate, then score: the figures `fastervar evaluate --json` writes. With a profile the
    baseline and the accelerated model run interleaved on the same prompts and noise. With `clip`
    (`clip_metrics.ClipFeatures`), each side's CLIP score ("a photo of a {class name}", where the
    model names its classes) and CLIP-FD to the real images, and the paired CLIP similarity."""
    check_domain(model)
    ref = Reference.load(judge) if isinstance(ext, ClassifierFeatures) else None
    classes = [c for c in range(model.cfg.var.num_classes) for _ in range(samples_per_class)]
    real, _ = real_test_images(judge)
    if ref is None:
        ref = Reference.from_images(ext, real)
    runners = {"baseline": TorchRunner(model, settings)}
    if profile is not None:
        from ..accel.accelerated import AcceleratedModel
        runners["accelerated"] = TorchRunner(AcceleratedModel(model, profile), settings)
    runs = interleaved(runners, batches(classes, seed, batch_size), progress=progress, desc="batches")
    base, base_images = _side(ext, ref, runs["baseline"], classes)
    out = {"samples": len(classes), "seconds": base["seconds_total"], "feature_extractor": ext.name,
           "judge": judge.name,
           "classifier_test_accuracy": ref.test_accuracy, "class_accuracy": base["class_accuracy"],
           "frechet_distance": base["frechet_distance"], "kid": base["kid"]}
    n_ref = min(len(real), len(classes))
    ref_scores = distribution_scores(ext, ref, reconstructions(model, real[:n_ref]))
    out.update(reference_frechet_distance=ref_scores["frechet_distance"], reference_kid=ref_scores["kid"],
               reference_samples=n_ref)
    texts = None
    if clip is not None:
        from .clip_metrics import class_prompts, clip_fd, clip_scores
        texts = class_prompts(model, classes)
        if texts:
            base["clip_score"] = out["clip_score"] = float(clip_scores(clip, list(base_images), texts).mean())
        base["clip_fd"] = out["clip_fd"] = clip_fd(clip, list(base_images), list(real))
    if profile is not None:
        acc, acc_images = _side(ext, ref, runs["accelerated"], classes)
        if clip is not None:
            from .clip_metrics import paired_clip_similarity
            if texts:
                acc["clip_score"] = float(clip_scores(clip, list(acc_images), texts).mean())
            acc["clip_fd"] = clip_fd(clip, list(acc_images), list(real))
            out["paired_clip_similarity"] = float(paired_clip_similarity(clip, list(acc_images),
                                                                         list(base_images)).mean())
        out.update(profile=profile.name, baseline=base, accelerated=acc,
                   speedup_transformer=speedup(runs["baseline"], runs["accelerated"], "steps"),
                   speedup_total=speedup(runs["baseline"], runs["accelerated"]),
                   paired_psnr=mean_psnr(base_images, acc_images),
                   paired_ssim=float(ssim(base_images, acc_images).mean()))
    return out


def evaluate_paired(model: FamilyModel, settings: SamplingSettings, prompts: list[int], seed: int, batch_size: int,
                    profile: Profile, bank=None, progress: bool = True, clip=None,
                    texts: list[str] | None = None) -> dict:
    """Baseline and a profile interleaved on the same prompts and noise, for a model no judge
    scores (a text-to-image model): how close each image stays (paired PSNR/SSIM) and the speedups.
    `prompts` are class labels, or with `bank` (a prompt set) rows of it. With `clip` (see
    `clip_metrics.ClipFeatures`), paired CLIP similarity and CLIP-FD too, and with the prompts'
    `texts` (one per row of the bank) each side's CLIP score."""
    from ..accel.accelerated import AcceleratedModel
    runners = {"baseline": TorchRunner(model, settings, prompts=bank),
               "accelerated": TorchRunner(AcceleratedModel(model, profile), settings, prompts=bank)}
    runs = interleaved(runners, batches(prompts, seed, batch_size), progress=progress, desc="batches")
    base, acc = (first_pass(runs[k]).images for k in ("baseline", "accelerated"))
    return {"samples": len(prompts), "seconds": summarize(runs["baseline"]).seconds, "profile": profile.name,
            "baseline": _times(runs["baseline"]), "accelerated": _times(runs["accelerated"]),
            "speedup_transformer": speedup(runs["baseline"], runs["accelerated"], "steps"),
            "speedup_total": speedup(runs["baseline"], runs["accelerated"]),
            "paired_psnr": mean_psnr(base, acc), "paired_ssim": float(ssim(base, acc).mean()),
            **({} if clip is None else paired_clip_figures(clip, list(base), list(acc),
                                                           texts and [texts[p] for p in prompts]))}
