"""Builds the tiny random Qwen2.5-VL (or Qwen3-VL) checkpoint used by the tests and smoke runs.

Example: python scripts/make_tiny_model.py --out /tmp/tiny-qwen2.5-vl --seed 0
         python scripts/make_tiny_model.py --out /tmp/tiny-qwen3-vl --family qwen3_vl
"""

import argparse
import time

from verl.utils.tiny_model import FAMILIES, QWEN3_VL_SPEC, TinyModelSpec, build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl", help="model type to build")
    args = parser.parse_args()
    start = time.perf_counter()
    spec = QWEN3_VL_SPEC if args.family == "qwen3_vl" else TinyModelSpec()
    out_dir = build_tiny_model(args.out, seed=args.seed, spec=spec)
    print(f"tiny {args.family} written to {out_dir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
