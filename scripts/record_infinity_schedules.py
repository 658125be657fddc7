"""Record upstream Infinity's image schedules (every aspect template x pn) into tests/data, so the
tests check ours against upstream without a clone.

    python scripts/record_infinity_schedules.py /path/to/Infinity   # a clone of FoundationVision/Infinity

Images use frame count 1 at every scale, as upstream's run_infinity.py sets before sampling.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.path.insert(0, str(Path(sys.argv[1]).resolve()))
    from infinity.utils.dynamic_resolution import dynamic_resolution_h_w

    out = {}
    for ratio, by_pn in dynamic_resolution_h_w.items():
        out[f"{ratio:.3f}"] = {pn: {"pixels": list(v["pixel"]), "scales": [[h, w] for _, h, w in v["scales"]]}
                               for pn, v in by_pn.items()}
    dest = Path(__file__).resolve().parent.parent / "tests" / "data" / "infinity_schedules.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest} ({len(out)} aspect templates)")


if __name__ == "__main__":
    main()
