"""Training entry point: ``pscv train --config FILE [section.key=value ...]`` or, multi-process,
``torchrun ... -m pscv_dist.train --config FILE ...`` (also under the ``deepspeed`` launcher)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import load_config
from .errors import cli_boundary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pscv train", description=__doc__)
    ap.add_argument("--config", help="YAML config (see configs/)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. loss.lambda_cv=0.3")
    ap.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def run(config_path: str | None, overrides: list[str]) -> dict | None:
    from .distributed import init_distributed, shutdown
    from .trainer import Trainer

    cfg = load_config(config_path, overrides)  # refused here, before any process group exists
    state = init_distributed()
    try:
        summary = Trainer(cfg, state).fit()
        return summary if state.is_main else None
    finally:
        shutdown(state)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def go() -> int:
        summary = run(args.config, args.overrides)
        if summary is not None:
            print(json.dumps(summary))
        return 0

    return cli_boundary("train", go, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
