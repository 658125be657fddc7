"""Regenerate the hand-made profiles in fastervar/assets/profiles/: the paper-split templates for the official VAR
models and the peers (FastVAR, SkipVAR's static operating points) on the shipped models' schedules. The calibrated
profile of the embedded model comes from `fastervar calibrate` (see README)."""

from fastervar.accel.cost import predicted_speedup
from fastervar.accel.presets import paper_split, peers
from fastervar.assets import PROFILES_DIR
from fastervar.models.var.configs import get_config
from fastervar.profile import identity


def main() -> None:
    PROFILES_DIR.mkdir(exist_ok=True)
    made = [paper_split(get_config(f"d{d}")) for d in (16, 20, 24, 30, 36)]
    made += [p for name in ("fashion-tiny", "fashion-16") for p in peers(get_config(name))]
    for p in made:
        cfg = get_config(p.model["config"])
        sp = predicted_speedup(cfg, identity(cfg), p, batch=1)
        p.measured = {"predicted_speedup_transformer": sp["transformer"], "predicted_speedup_total": sp["total"],
                      "predicted_at_batch": 1}
        p.save(PROFILES_DIR / f"{p.name}.json")
        print(f"wrote {PROFILES_DIR / p.name}.json")


if __name__ == "__main__":
    main()
