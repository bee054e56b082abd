"""`moderation model convert`: OpenAI's original CLIP `.pt` checkpoints as Hugging Face checkpoint directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.openai_clip import convert_openai_checkpoint

    if not args.source.is_file():  # like `produce` with a missing image: the command line is wrong
        raise CommandError.user(f"{args.source}: no such file")
    if args.tokenizer is None and args.bpe is None:
        raise CommandError.user(
            "the .pt holds no tokenizer: give --tokenizer DIR (a Hugging Face CLIP tokenizer directory) "
            "or --bpe FILE (OpenAI's bpe_simple_vocab_16e6.txt.gz)"
        )
    out = convert_openai_checkpoint(
        args.source, args.out, tokenizer_dir=args.tokenizer, bpe_path=args.bpe,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(out)
    return ExitCode.OK


def register(commands: Any) -> None:
    model = commands.add_parser("model", help="model checkpoints")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    convert = model_commands.add_parser(
        "convert", help="convert an OpenAI CLIP .pt (ViT) into a Hugging Face checkpoint directory"
    )
    convert.add_argument(
        "source", type=Path, metavar="SRC.pt", help="the file clip.load() cached (TorchScript or state dict)"
    )
    convert.add_argument("out", type=Path, metavar="OUT_DIR", help="the checkpoint directory to write (new or empty)")
    tokenizer = convert.add_mutually_exclusive_group()
    tokenizer.add_argument(
        "--tokenizer", type=Path, default=None, metavar="DIR", help="a Hugging Face CLIP tokenizer directory"
    )
    tokenizer.add_argument(
        "--bpe", type=Path, default=None, metavar="FILE",
        help="OpenAI's bpe_simple_vocab_16e6.txt.gz to build the tokenizer from",
    )
    convert.set_defaults(handler=cmd_convert)
