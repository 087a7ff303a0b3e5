"""Merges a sharded FSDP checkpoint into a Hugging Face model folder (EasyR1's model_merger CLI).

Example:
  python3 scripts/model_merger.py --local_dir checkpoints/run/global_step_15/actor
writes the merged model into checkpoints/run/global_step_15/actor/huggingface (next to its
config, tokenizer and processor files), loadable by transformers' from_pretrained and vLLM.
A LoRA run's checkpoint holds its adapters alone: they are folded into the base model the run
started from (recorded in lora_config.json; --base_model_dir if it has moved); --adapter_dir also
writes the adapter alone (PEFT format: adapter_config.json + adapter_model.safetensors).
"""

import argparse
import tempfile

from verl.utils.cli_exit import exit_cleanly
from verl.utils.model_merger import DTYPES, merge_checkpoint, upload_to_hub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument(
        "--local_dir", required=True,
        help="the checkpoint's actor folder, CKPT/global_step_N/actor "
        "(holds model_world_size_W_rank_R.pt and huggingface/)",
    )
    parser.add_argument(
        "--target_dir", default=None,
        help="output folder (default: LOCAL_DIR/huggingface, as in EasyR1); "
        "an existing model folder there is replaced atomically",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None,
        help="cast floating tensors to this dtype (default: keep the saved dtype, fp32 master weights; "
        "EasyR1 always casts to bfloat16)",
    )
    parser.add_argument(
        "--adapter_dir", default=None,
        help="LoRA checkpoints only: also write the adapter alone here in PEFT format",
    )
    parser.add_argument(
        "--base_model_dir", default=None,
        help="LoRA checkpoints only: the base model folder the adapters were trained on "
        "(default: the one lora_config.json records)",
    )
    parser.add_argument(
        "--allow_unverified", action="store_true",
        help="merge a checkpoint that has no manifest.json (written before integrity manifests, or an actor/ folder "
        "copied out of its global_step_N): its files are then not checked for truncation or altered bytes",
    )
    parser.add_argument(
        "--hf_upload_path", default=None,
        help="Hugging Face Hub repo id (user/name) to upload the merged folder to (created private if new)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = merge_checkpoint(
        args.local_dir, args.target_dir, DTYPES[args.dtype] if args.dtype else None, args.adapter_dir,
        args.base_model_dir, args.allow_unverified,
    )
    print(
        f"merged {result.world_size} shards: {result.num_tensors} tensors ({', '.join(result.dtypes)}), "
        f"{result.weight_bytes / 2**20:.1f} MiB of weights -> {result.target_dir} in {result.seconds:.1f} s"
    )
    if result.adapter_dir:
        print(f"LoRA adapter (PEFT format) -> {result.adapter_dir}")
    if args.hf_upload_path:
        upload_to_hub(result.target_dir, args.hf_upload_path)
        print(f"uploaded {result.target_dir} to https://huggingface.co/{args.hf_upload_path}")


if __name__ == "__main__":
    # A wrong or unverified --local_dir, a full disk, ...: one message on stderr, its traceback in
    # the temporary folder's error.log.
    with exit_cleanly(tempfile.gettempdir()):
        main()
