"""Builds the tiny random Qwen2.5-VL (or Qwen3-VL, Qwen3.5, Qwen3.5-MoE) checkpoint used by the tests and smoke runs.

Example: python scripts/make_tiny_model.py --out /tmp/tiny-qwen2.5-vl --seed 0
         python scripts/make_tiny_model.py --out /tmp/tiny-qwen3-vl --family qwen3_vl
         python scripts/make_tiny_model.py --out /tmp/tiny-qwen3.5 --family qwen3_5
         python scripts/make_tiny_model.py --out models/tiny_qwen25vl_wide --set vision_depth=2 --set vision_hidden_size=64
"""

import argparse
import dataclasses
import time

from verl.toy.build_stamp import keep_existing_build, write_build_stamp
from verl.toy.tiny_model import FAMILIES, SPECS, build_tiny_model, override_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl", help="model type to build")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field of the family's TinyModelSpec (verl/toy/tiny_model.py), e.g. vision_depth=2; repeatable",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep OUT if it holds a build of this seed and spec (its build_stamp.json); rebuild a stamped build of another",
    )
    args = parser.parse_args()
    try:
        spec = override_spec(SPECS[args.family], args.set)
    except ValueError as error:
        parser.error(str(error))
    stamp = {"builder": "make_tiny_model", "seed": args.seed, "spec": dataclasses.asdict(spec)}
    if args.reuse and keep_existing_build(args.out, stamp, "make_tiny_model.py"):
        return
    start = time.perf_counter()
    out_dir = build_tiny_model(args.out, seed=args.seed, spec=spec)
    write_build_stamp(out_dir, stamp)
    print(f"tiny {args.family} written to {out_dir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
