"""fastervar: training-free acceleration and compiled deployment for next-scale (VAR-family) generators.

The layers, imports pointing down only:
- `cli/`: the command line, thin modules over the layers below;
- `serve`: Ray Serve and Ray Data over the runtime (optional extras);
- `bench/`, `calibrate/`, `export/`, `evaluate/`, `train/`: the toolchain (needs torch);
- `accel/`: a profile applied to any family's scale step;
- `models/`: the model families on the scale-step protocol, checkpoint I/O, the step loop;
- `timing`: the one timing harness;
- `runtime/`: the bundle runner (no torch);
- `profile`: the profile schema (no torch); `bundle_contract`: the bundle's tensor names, manifest
  schema and checks (no torch);
- `utils/`: atomic files and folders, seeded noise, images, hashing, machine facts; it imports
  nothing of ours but `errors`.

Importing the package never imports torch: the runtime, the bundle contract and the profile
schema must work on hosts that only have numpy and onnxruntime.
"""

__version__ = "0.1.0"
