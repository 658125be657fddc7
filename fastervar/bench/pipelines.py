"""The profile and runtime variants a bench compares: the model's default profile, and the
bundles (given, or exported on the spot) each checked to hold this model and profile."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..accel.presets import paper_split
from ..errors import FastervarError
from ..models.sampling import SamplingSettings
from ..models.var.family import VARModel
from ..profile import Profile, identity
from ..profiles import resolve, shipped


def default_profile(model: VARModel) -> Profile:
    """A shipped model's calibrated profile; else the shipped paper-split template, or one made on
    the spot for configurations without a shipped template."""
    config = model.spec().config
    names = [f"{config}-calibrated", f"{config}-paper-split"]
    name = next((n for n in names if n in shipped()), None)
    return resolve(name) if name else paper_split(model)


def bench_pipelines(model: VARModel, profile: Profile, settings: SamplingSettings, bundle_path: str | None,
                    identity_path: str | None, out_dir: str | Path, batch_size: int, provider: str,
                    compare_bundles: Sequence[str] = ()) -> dict:
    """The given bundles (checked to hold this profile, and the identity profile), or fresh exports
    into OUT/bundle and OUT/bundle-identity; plus `compare_bundles`, each checked to hold this
    model and either profile, named `bundle-PRECISION-PROFILE`."""
    from ..export.bundle import check_target, export_bundle
    from ..models.checkpoint import weights_sha256
    from ..runtime.pipeline import Pipeline
    from .command import runtime_variants

    sha = None
    for path, made in ((bundle_path, profile), (identity_path, identity(model))):
        if path is None:
            dest = Path(out_dir) / ("bundle" if made is profile else "bundle-identity")
            check_target(dest)
            sha = sha or weights_sha256(model)
            export_bundle(model, made, dest, settings, max_batch=batch_size, weights_sha256=sha)
    bundle_path = bundle_path or Path(out_dir) / "bundle"
    pipes = runtime_variants(Path(bundle_path), provider, Path(identity_path or Path(out_dir) / "bundle-identity"))
    made_for = pipes["bundle"].manifest.data["profile"]
    if made_for["json"]["steps"] != profile.to_dict()["steps"]:
        raise FastervarError(f"bundle {bundle_path} was exported with profile {made_for['name']!r}, not {profile.name!r}")
    for path in compare_bundles:
        pipe = Pipeline.from_bundle(path, provider=provider)
        data = pipe.manifest.data
        if data["model"].get("architecture") != json.loads(json.dumps(model.cfg.to_dict())):
            raise FastervarError(f"--compare-bundle {path} was exported from another model ({data['model']['config']})")
        steps = data["profile"].get("json", {}).get("steps")
        if steps not in (profile.to_dict()["steps"], identity(model).to_dict()["steps"]):
            raise FastervarError(f"--compare-bundle {path} holds profile {data['profile']['name']!r}, neither "
                                 f"{profile.name!r} nor identity")
        name = f"bundle-{data['precision']}-{'identity' if steps != profile.to_dict()['steps'] else 'profile'}"
        if name in pipes:
            name = f"{name}-{len(pipes)}"
        pipes[name] = pipe
    return pipes
