"""Builds a synthetic task (RL parquet splits + cold-start SFT file) into a directory.

    python scripts/make_synthetic_dataset.py --out data/shapes [--seed 0] [--train 2000] [--val 200]
    python scripts/make_synthetic_dataset.py --out data/scenes --task scenes

`--task shapes` (default, verl/data/synthetic.py): the recipe's own task. `--task scenes`
(verl/data/scenes.py): a second task of a different kind, small varied images on textured
backgrounds, 5 kinds x 7 colours at free positions, yes/no questions beside open ones; the
shapes-only flags (--image-size, --train-prior-strength, --vague-description-rate,
--shape-placement) do not apply to it.

Writes DIR/train.parquet and DIR/val.parquet (columns problem, answer, images, distractor,
question_type) and DIR/sft.json with its images under DIR/images/. See verl/data/synthetic.py.
"""

import argparse
import dataclasses
import hashlib
import os
import time

from verl.data.scenes import SceneTaskSpec, write_scenes_dataset
from verl.data.synthetic import SHAPE_PLACEMENTS, SyntheticTaskSpec, write_synthetic_dataset
from verl.utils.build_stamp import keep_existing_build, write_build_stamp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FORMAT_PROMPT = os.path.join(REPO_ROOT, "configs", "format_prompt", "sr1.jinja")


def parse_args() -> argparse.Namespace:
    defaults = SyntheticTaskSpec()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--task", choices=["shapes", "scenes"], default="shapes", help="which synthetic task")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--train", type=int, default=2000, help="rows in train.parquet")
    parser.add_argument("--val", type=int, default=200, help="rows in val.parquet")
    parser.add_argument("--sft", type=int, default=3000, help="image questions in sft.json (each also gets a text-only record)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="image side in pixels")
    parser.add_argument(
        "--prior-strength",
        type=float,
        default=defaults.prior_strength,
        help="share of cold-start (sft) rows whose answer is the prior answer of their question text",
    )
    parser.add_argument(
        "--train-prior-strength",
        type=float,
        default=defaults.train_prior_strength,
        help="the same for the RL train split (default: none, uniform answers like val)",
    )
    parser.add_argument(
        "--vague-description-rate",
        type=float,
        default=defaults.vague_description_rate,
        help="share of cold-start image rows whose description only counts the shapes (an insufficient perception)",
    )
    parser.add_argument(
        "--shape-placement",
        choices=SHAPE_PLACEMENTS,
        default=defaults.shape_placement,
        help="centred (default): each shape in the middle of its slot, one visual token per shape; scattered: at a random height in its slot",
    )
    parser.add_argument(
        "--format-prompt", default=DEFAULT_FORMAT_PROMPT, help="jinja format prompt for the SFT user turns"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep OUT if it holds a build of these arguments (its build_stamp.json); rebuild a stamped build of others",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.task == "scenes":
        spec = SceneTaskSpec(prior_strength=args.prior_strength)
        write = write_scenes_dataset
    else:
        spec = SyntheticTaskSpec(
            image_size=args.image_size,
            prior_strength=args.prior_strength,
            train_prior_strength=args.train_prior_strength,
            vague_description_rate=args.vague_description_rate,
            shape_placement=args.shape_placement,
        )
        write = write_synthetic_dataset
    with open(args.format_prompt, "rb") as f:
        format_prompt_sha256 = hashlib.sha256(f.read()).hexdigest()
    stamp = {
        "builder": "make_synthetic_dataset",
        "seed": args.seed,
        "sizes": {"train": args.train, "val": args.val, "sft": args.sft},
        "spec": dataclasses.asdict(spec),
        "format_prompt_sha256": format_prompt_sha256,
    }
    if args.task != "shapes":  # a shapes build keeps the stamp it always had (reused as it is)
        stamp["task"] = args.task
    if args.reuse and keep_existing_build(args.out, stamp, "make_synthetic_dataset.py"):
        return
    start = time.perf_counter()
    files = write(
        out_dir=args.out,
        format_prompt_path=args.format_prompt,
        seed=args.seed,
        train_size=args.train,
        val_size=args.val,
        sft_size=args.sft,
        spec=spec,
    )
    write_build_stamp(args.out, stamp)
    print(f"wrote {files.train}, {files.val}, {files.sft} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
